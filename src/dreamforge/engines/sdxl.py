"""SDXL on diffusers: the local GPU provider (`local-sdxl-epicrealism`).

Imported only by a worker when a job runs, so processes that never render never load torch.
Device, dtype and memory choices are explicit settings: CUDA runs fp16 (fp32 VAE upcast is left
to the pipeline's `force_upcast`), CPU runs fp32, and starting noise is always drawn on the CPU
so a seed means the same image on any device.
"""

from __future__ import annotations

import os

# Loading must never reach a hub: single-file loading silently goes online without this.
os.environ["HF_HUB_OFFLINE"] = "1"

import logging
import platform
import threading
import time
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import (
    DPMSolverMultistepScheduler,
    StableDiffusionXLPipeline,
    UniPCMultistepScheduler,
)
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from transformers.utils import logging as transformers_logging

from dreamforge import __version__
from dreamforge.engines.base import EngineError, ModelSpec, RenderRequest, Scheduler, StepCallback

log = logging.getLogger(__name__)
# Worker logs are structured job events; tqdm bars would only garble them.
diffusers_logging.disable_progress_bar()
transformers_logging.disable_progress_bar()

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Above this many pixels the VAE decode alone can exhaust a 24 GB card: decode in tiles instead.
_VAE_TILING_PIXELS = 2048 * 2048


def make_scheduler(name: str, base_config: Any) -> Any:
    """The sampler `name` configured from the checkpoint's own scheduler config."""
    if name == Scheduler.dpmpp_2m_karras:
        return DPMSolverMultistepScheduler.from_config(
            base_config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
        )
    if name == Scheduler.unipc:
        return UniPCMultistepScheduler.from_config(base_config)
    raise EngineError("unknown_scheduler", f"scheduler {name!r} is not supported")


class SDXLEngine:
    """Keeps one SDXL pipeline warm and renders with it; one render at a time."""

    def __init__(self, device: str = "auto", dtype: str = "auto", cpu_offload: bool = False) -> None:
        self.device = self._pick_device(device)
        self.dtype = self._pick_dtype(dtype, self.device)
        self.cpu_offload = cpu_offload and self.device == "cuda"
        self._pipe: Any = None
        self._loaded_key: tuple[str, str] | None = None
        self._base_scheduler_config: Any = None
        self._lock = threading.Lock()

    @staticmethod
    def _pick_device(device: str) -> str:
        if device != "auto":
            if device == "cuda" and not torch.cuda.is_available():
                raise EngineError("device_unavailable", "DF_DEVICE=cuda but no CUDA device is visible")
            return device
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"

    @staticmethod
    def _pick_dtype(dtype: str, device: str) -> torch.dtype:
        if dtype != "auto":
            return _DTYPES[dtype]
        # Half precision halves VRAM on GPUs; CPUs have no fast fp16 kernels.
        return torch.float16 if device in ("cuda", "mps") else torch.float32

    def runtime_info(self) -> dict[str, str]:
        """Versions and placement, recorded in every image's recipe."""
        return {
            "dreamforge": __version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "rng_device": "cpu",
        }

    def load(self, model: ModelSpec) -> float:
        """Load `model` unless it is already warm; frees the previous pipeline first."""
        key = (str(model.id), model.sha256)
        with self._lock:
            if self._loaded_key == key:
                return 0.0
            self._unload()
            started = time.perf_counter()
            try:
                pipe = self._from_disk(model)
            except EngineError:
                raise
            except Exception as exc:
                raise EngineError("model_load_failed", f"could not load model {model.name!r}: {exc}") from exc
            self._place(pipe)
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe
            self._base_scheduler_config = pipe.scheduler.config
            self._loaded_key = key
            return time.perf_counter() - started

    def _from_disk(self, model: ModelSpec) -> Any:
        path = Path(model.path)
        if not path.exists():
            raise EngineError(
                "model_files_missing", f"model {model.name!r} is registered but {path} is missing"
            )
        if model.layout == "single_file":
            if not model.config_path or not Path(model.config_path).is_dir():
                raise EngineError(
                    "model_files_missing", f"single-file model {model.name!r} has no local config folder"
                )
            return StableDiffusionXLPipeline.from_single_file(
                str(path), config=model.config_path, local_files_only=True, dtype=self.dtype
            )
        # The downloader keeps only fp16 weights when a repo offers them; fp32 devices upcast them.
        has_fp16 = any(path.glob("unet/*.fp16*.safetensors"))
        has_plain = any(p for p in path.glob("unet/*.safetensors") if ".fp16" not in p.name)
        variant = "fp16" if has_fp16 and (self.dtype == torch.float16 or not has_plain) else None
        return StableDiffusionXLPipeline.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, dtype=self.dtype, variant=variant
        )

    def _place(self, pipe: Any) -> None:
        if self.cpu_offload:
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(self.device)

    def _unload(self) -> None:
        if self._pipe is None:
            return
        self._pipe = None
        self._loaded_key = None
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def render(self, model: ModelSpec, request: RenderRequest, on_step: StepCallback) -> Image.Image:
        """Render one image; the CPU generator makes the seed device-independent."""
        self.load(model)
        with self._lock:
            pipe = self._pipe
            pipe.scheduler = make_scheduler(request.scheduler, self._base_scheduler_config)
            if self.device == "cuda" and request.width * request.height > _VAE_TILING_PIXELS:
                pipe.vae.enable_tiling()
            else:
                pipe.vae.disable_tiling()
            generator = torch.Generator(device="cpu").manual_seed(request.seed)

            def step_end(p: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                on_step(step + 1, int(getattr(p, "num_timesteps", request.steps)))
                return kwargs

            try:
                with torch.inference_mode():
                    result = pipe(
                        prompt=request.prompt,
                        negative_prompt=request.negative_prompt or None,
                        width=request.width,
                        height=request.height,
                        num_inference_steps=request.steps,
                        guidance_scale=request.guidance,
                        generator=generator,
                        output_type="pil",
                        callback_on_step_end=step_end,
                    )
            except torch.cuda.OutOfMemoryError as exc:
                torch.cuda.empty_cache()
                raise EngineError(
                    "out_of_memory",
                    f"the GPU ran out of memory at {request.width}x{request.height}; "
                    "try a smaller size or DF_CPU_OFFLOAD=true",
                ) from exc
            image: Image.Image = result.images[0]
            return image
