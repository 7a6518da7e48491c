"""What the job runner needs from an engine (a provider adapter), independent of torch."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError

if TYPE_CHECKING:
    from PIL import Image

# The provider a job gets when it names none: SDXL on diffusers, on this machine's GPU.
DEFAULT_PROVIDER = "local-sdxl-epicrealism"
# The OpenAI Images API (engines.openai_images), enabled with DF_PROVIDERS.
OPENAI_IMAGES_PROVIDER = "openai-images"
# Providers whose jobs wait on a remote API, not a GPU: they run on their own queue and threads.
REMOTE_PROVIDERS = frozenset({OPENAI_IMAGES_PROVIDER})
# Every provider DF_PROVIDERS may name (runtime.engine_providers makes their engines).
KNOWN_PROVIDERS = frozenset({DEFAULT_PROVIDER, *REMOTE_PROVIDERS})


class UpscaleMethod(StrEnum):
    """How a job's images are enlarged after generation."""

    # A super-resolution network alone (ESRGAN and kin): fast, adds no new detail of its own.
    model = "model"
    # The network, then an SDXL img2img pass over its output: A1111's "hires fix".
    refine = "refine"


class Scheduler(StrEnum):
    """Samplers a job can ask for."""

    dpmpp_2m_karras = "dpmpp_2m_karras"
    unipc = "unipc"


@dataclass(frozen=True)
class ModelSpec:
    """Where a checkpoint lives and how to load it."""

    id: uuid.UUID
    name: str
    layout: str  # "diffusers" or "single_file"
    path: str
    config_path: str | None
    sha256: str


@dataclass(frozen=True)
class RenderRequest:
    """What every image of a job shares; each image differs only by its seed."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: str


@dataclass(frozen=True)
class RefineRequest:
    """The img2img pass of `UpscaleMethod.refine`: how much to change and over how many steps.

    As in A1111, `steps` is the schedule's length and `int(steps * denoise)` of them run.
    """

    denoise: float
    steps: int

    @property
    def executed_steps(self) -> int:
        """Denoising steps the pass actually runs."""
        return int(self.steps * self.denoise)


# Makes an engine; called once per process, when the first job of its provider runs.
EngineFactory = Callable[[], "Engine"]
# Makes the upscaler; called once per process, when the first job that upscales runs.
UpscalerFactory = Callable[[], "Upscaler"]

# Called after each denoising step with (steps done, total steps).
StepCallback = Callable[[int, int], None]


class EngineError(DreamForgeError):
    """A render failed for a reason a user can act on; `code` is stable."""

    code = ErrorCode.engine_error

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message, code=code)


class OutOfMemory(EngineError):
    """The device ran out of memory for this batch; a smaller batch may fit."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.gpu_oom, message)


class DeviceFault(EngineError):
    """The device is in an unrecoverable state (a device-side assert, an illegal memory access).

    Nothing more can run in this process: the worker re-queues its job and exits, so that its
    supervisor starts a fresh process.
    """

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.gpu_fault, message)


class Engine(Protocol):
    """Renders images from a model; keeps what it loaded warm between calls."""

    def load(self, model: ModelSpec) -> float:
        """Make `model` ready; returns seconds spent loading (0 when already warm)."""
        ...

    def render(
        self, model: ModelSpec, request: RenderRequest, seeds: Sequence[int], on_step: StepCallback
    ) -> list[Image.Image]:
        """Render one image per seed in one call, reporting each step of the call.

        Raises `OutOfMemory` when the batch does not fit and `DeviceFault` when the device is lost.
        """
        ...

    def refine(
        self,
        model: ModelSpec,
        request: RenderRequest,
        image: Image.Image,
        seed: int,
        refine: RefineRequest,
        on_step: StepCallback,
    ) -> Image.Image:
        """An img2img pass over `image` at its own size with the job's prompt (hires fix's second pass).

        Reuses the components `render` loaded; same seed and inputs give the same image.
        """
        ...

    def runtime_info(self) -> dict[str, str]:
        """Library versions, device, dtype and RNG device, for the recipe."""
        ...


class Upscaler(Protocol):
    """Enlarges images with a super-resolution model; keeps the loaded model warm between calls."""

    def load(self, model: ModelSpec) -> float:
        """Make `model` ready; returns seconds spent loading (0 when already warm)."""
        ...

    def upscale(self, model: ModelSpec, image: Image.Image, scale: int, on_step: StepCallback) -> Image.Image:
        """`image` enlarged exactly `scale` times, reporting each tile pass as a step.

        Raises `OutOfMemory` when even tiles do not fit and `DeviceFault` when the device is lost.
        """
        ...

    def runtime_info(self) -> dict[str, str]:
        """Library versions, device and dtype, for the recipe."""
        ...
