"""A small engine without torch: the runner's tests use it to check the job path alone.

It honours the `Engine` protocol as the SDXL engine does where a job would notice: it refuses a
model whose files are gone, reports every step, and the same seed gives the same image.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from dreamforge import __version__
from dreamforge.engines.base import EngineError, ModelSpec, RefineRequest, RenderRequest, StepCallback
from dreamforge.error_codes import ErrorCode


class FakeEngine:
    """Renders seeded noise; counts the loads it did."""

    def __init__(self) -> None:
        self.loaded: ModelSpec | None = None
        self.loads = 0
        # The batch size of every render call, in order.
        self.calls: list[int] = []

    def load(self, model: ModelSpec) -> float:
        """Check the model is on disk; 0 when it is already 'loaded'."""
        if not Path(model.path).exists():
            raise EngineError(
                ErrorCode.model_files_missing, f"model {model.name!r} is registered but missing"
            )
        if self.loaded == model:
            return 0.0
        self.loaded = model
        self.loads += 1
        return 0.01

    def render(
        self, model: ModelSpec, request: RenderRequest, seeds: Sequence[int], on_step: StepCallback
    ) -> list[Image.Image]:
        """One image of seeded random pixels per seed, after reporting each step."""
        self.load(model)
        self.calls.append(len(seeds))
        for step in range(1, request.steps + 1):
            on_step(step, request.steps)
        size = request.width * request.height * 3
        return [
            Image.frombytes("RGB", (request.width, request.height), random.Random(seed).randbytes(size))
            for seed in seeds
        ]

    def refine(
        self,
        model: ModelSpec,
        request: RenderRequest,
        image: Image.Image,
        seed: int,
        refine: RefineRequest,
        on_step: StepCallback,
    ) -> Image.Image:
        """`image` with seeded noise mixed in by `denoise`, after reporting each executed step."""
        self.load(model)
        total = refine.executed_steps
        for step in range(1, total + 1):
            on_step(step, total)
        noise = Image.frombytes(
            "RGB", image.size, random.Random(seed).randbytes(image.width * image.height * 3)
        )
        return Image.blend(image.convert("RGB"), noise, refine.denoise)

    def runtime_info(self) -> dict[str, str]:
        """What the recipe records about the engine."""
        return {"dreamforge": __version__, "device": "cpu", "dtype": "none", "rng_device": "cpu"}


class FakeUpscaler:
    """Enlarges with nearest-neighbour resampling, one step per call; counts its calls."""

    def __init__(self) -> None:
        self.loaded: ModelSpec | None = None
        self.calls = 0

    def load(self, model: ModelSpec) -> float:
        """Check the file is on disk; 0 when it is already 'loaded'."""
        if not Path(model.path).exists():
            raise EngineError(ErrorCode.model_files_missing, f"upscaler {model.name!r} is missing")
        if self.loaded == model:
            return 0.0
        self.loaded = model
        return 0.01

    def upscale(self, model: ModelSpec, image: Image.Image, scale: int, on_step: StepCallback) -> Image.Image:
        """`image` at `scale` times its size."""
        self.load(model)
        self.calls += 1
        on_step(1, 1)
        return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)

    def runtime_info(self) -> dict[str, str]:
        """What the recipe records about the upscaler."""
        return {"dreamforge": __version__, "device": "cpu", "architecture": "fake"}
