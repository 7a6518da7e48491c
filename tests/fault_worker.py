"""Run `dreamforge` with a GPU fault injected into the SDXL engine, so a worker fails as on a real GPU.

    python tests/fault_worker.py MARKER -- worker ...

The first pipeline call of any process sharing MARKER (a file path) raises the error CUDA raises
after an illegal memory access; later calls render normally. Only the engine's pipeline call is
replaced: everything the worker does about the fault is the real code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def main() -> None:
    """Patch the engine, then hand the remaining arguments to the `dreamforge` command."""
    marker, separator, *args = sys.argv[1:]
    assert separator == "--", __doc__
    from dreamforge.cli.main import main as dreamforge
    from dreamforge.engines import sdxl

    original = sdxl.SDXLEngine._run_pipeline

    def faulty(self: sdxl.SDXLEngine, pipe: Any, **kwargs: Any) -> Any:
        fired = Path(marker)
        if not fired.exists():
            fired.write_text("fired")
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(self, pipe, **kwargs)

    sdxl.SDXLEngine._run_pipeline = faulty  # type: ignore[method-assign]
    sys.argv = ["dreamforge", *args]
    dreamforge()


if __name__ == "__main__":
    main()
