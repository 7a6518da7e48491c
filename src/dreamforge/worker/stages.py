"""The stages that follow an item's generation (upscale, refine), composed by the runner.

Each stage takes the image the previous one made and hands on a new one; the runner reports each
stage's steps as the item's progress and stores whatever the last stage returns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from dreamforge.engines.base import Engine, ModelSpec, RefineRequest, RenderRequest, StepCallback, Upscaler
from dreamforge.jobs.stages import REFINE, UPSCALE

if TYPE_CHECKING:
    from PIL import Image


class ItemStage(Protocol):
    """One stage of an item's work after generation."""

    @property
    def name(self) -> str:
        """The stage's name in the job's stage plan (`jobs.stages`)."""
        ...

    def describe(self, image: Image.Image) -> str:
        """What the stage will do to `image`, for the job's log."""
        ...

    def run(self, seed: int, image: Image.Image, on_step: StepCallback) -> Image.Image:
        """The stage's output for one item's `image`, reporting each step."""
        ...


@dataclass(frozen=True)
class UpscaleStage:
    """Enlarge with a super-resolution model."""

    upscaler: Upscaler
    model: ModelSpec
    scale: int
    name: str = UPSCALE

    def describe(self, image: Image.Image) -> str:
        """E.g. `2x with 'RealESRGAN_x4plus' to 2048x2048`."""
        width, height = image.width * self.scale, image.height * self.scale
        return f"{self.scale}x with {self.model.name!r} to {width}x{height}"

    def run(self, seed: int, image: Image.Image, on_step: StepCallback) -> Image.Image:
        """The upscaled image (seed unused: a super-resolution pass is deterministic)."""
        return self.upscaler.upscale(self.model, image, self.scale, on_step)


@dataclass(frozen=True)
class RefineStage:
    """An SDXL img2img pass over the upscaled image, with the job's prompt and the item's seed."""

    engine: Engine
    model: ModelSpec
    request: RenderRequest
    refine: RefineRequest
    name: str = REFINE

    def describe(self, image: Image.Image) -> str:
        """E.g. `img2img at 2048x2048, denoise 0.35: 7 of 20 steps`."""
        return (
            f"img2img at {image.width}x{image.height}, denoise {self.refine.denoise}: "
            f"{self.refine.executed_steps} of {self.refine.steps} steps"
        )

    def run(self, seed: int, image: Image.Image, on_step: StepCallback) -> Image.Image:
        """The refined image; the same seed and input give the same bytes."""
        request = replace(self.request, width=image.width, height=image.height)
        return self.engine.refine(self.model, request, image, seed, self.refine, on_step)


def upscale_record(
    upscale: dict[str, Any], upscaler: dict[str, Any], runtime: dict[str, str], base_size: tuple[int, int]
) -> dict[str, Any]:
    """The recipe's `upscale` section: both stages' settings, the upscaler and its provenance."""
    scale = int(upscale["scale"])
    record: dict[str, Any] = {
        "method": upscale["method"],
        "scale": scale,
        "base_width": base_size[0],
        "base_height": base_size[1],
        "width": base_size[0] * scale,
        "height": base_size[1] * scale,
        "keep_base": bool(upscale.get("keep_base", False)),
        "upscaler": upscaler,
        "runtime": runtime,
    }
    if upscale["method"] == "refine":
        refine = RefineRequest(denoise=float(upscale["denoise"]), steps=int(upscale["steps"]))
        record.update(denoise=refine.denoise, steps=refine.steps, executed_steps=refine.executed_steps)
    return record
