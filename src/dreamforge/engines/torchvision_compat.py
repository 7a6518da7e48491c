"""Lets torchvision import beside a torch build it was not compiled for.

PyPI's torchvision wheel is a CUDA build. Beside a CPU-only torch (our dev and CI machines) its C++
ops cannot load; torchvision tolerates that everywhere except two unguarded `register_fake` calls
(`torchvision::nms`, `qnms`), so `import torchvision` raises, and with it transformers, diffusers
and spandrel, which import torchvision whenever it is installed. Declaring those two op schemas
(without kernels: nothing we run calls them) lets the import finish. Where the ops do load (a
matching torch and torchvision, as on a CUDA worker) nothing is declared.

Importing this module does it (modules import it before those libraries); the function is there for
code that imports them lazily.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
_lock = threading.Lock()
_checked = False


def _ops_library() -> Path | None:
    """torchvision's compiled ops library, found without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("_C.*so")) + sorted(Path(location).glob("_C.pyd"))
        if found:
            return found[0]
    return None


def ensure_torchvision_importable() -> bool:
    """Make `import torchvision` work; True when its C++ ops had to be declared (they did not load)."""
    global _checked
    with _lock:
        if _checked:
            return False
        _checked = True
        library = _ops_library()
        if library is None:
            return False
        import torch

        try:
            # What torchvision's own import does first; loading it twice is harmless.
            torch.ops.load_library(str(library))  # type: ignore[no-untyped-call]
            return False
        except OSError:
            pass
        for op in ("nms", "qnms"):
            torch.library.define(f"torchvision::{op}", _SCHEMA)
        return True


ensure_torchvision_importable()
