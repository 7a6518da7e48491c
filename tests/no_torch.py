"""Run `dreamforge` in a process where torch, diffusers and transformers cannot be imported.

    python tests/no_torch.py worker --queue remote.default

A process that tried to import them fails at once, so a remote worker that renders jobs under this
wrapper proves it never needs the GPU stack.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType

BLOCKED = ("torch", "diffusers", "transformers", "spandrel", "torchvision")


class _Blocker(MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.split(".")[0] in BLOCKED:
            raise ImportError(f"{fullname} may not be imported in this process (tests/no_torch.py)")
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, _Blocker())
    from dreamforge.cli.main import app

    app(sys.argv[1:])
