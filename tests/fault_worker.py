"""Run `dreamforge` with a fault injected into an engine, so a process fails as on a real machine.

    python tests/fault_worker.py gpu MARKER -- worker ...
    python tests/fault_worker.py die-before-upscale:N MARKER -- serve ...

`gpu`: the first pipeline call of any process sharing MARKER (a file path) raises the error CUDA
raises after an illegal memory access; later calls render normally.
`die-before-upscale:N`: the process dies at once (as if SIGKILLed) when it is about to upscale for
the N-th time (0-based), once per MARKER: a crash between an item's two stages.
Only the engine's own call is replaced: everything the service does about the fault is the real code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def _gpu_fault(marker: Path) -> None:
    from dreamforge.engines import sdxl

    original = sdxl.SDXLEngine._run_pipeline

    def faulty(self: sdxl.SDXLEngine, pipe: Any, **kwargs: Any) -> Any:
        if not marker.exists():
            marker.write_text("fired")
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(self, pipe, **kwargs)

    sdxl.SDXLEngine._run_pipeline = faulty  # type: ignore[method-assign]


def _die_before_upscale(marker: Path, call: int) -> None:
    from dreamforge.engines import upscale

    original = upscale.SpandrelUpscaler.upscale
    calls = 0

    def dying(self: upscale.SpandrelUpscaler, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls - 1 == call and not marker.exists():
            marker.write_text("fired")
            os._exit(137)
        return original(self, *args, **kwargs)

    upscale.SpandrelUpscaler.upscale = dying  # type: ignore[method-assign]


def main() -> None:
    """Patch the engine, then hand the remaining arguments to the `dreamforge` command."""
    kind, marker, separator, *args = sys.argv[1:]
    assert separator == "--", __doc__
    from dreamforge.cli.main import main as dreamforge

    if kind == "gpu":
        _gpu_fault(Path(marker))
    elif kind.startswith("die-before-upscale:"):
        _die_before_upscale(Path(marker), int(kind.split(":", 1)[1]))
    else:
        raise SystemExit(f"unknown fault {kind!r}\n{__doc__}")
    sys.argv = ["dreamforge", *args]
    dreamforge()


if __name__ == "__main__":
    main()
