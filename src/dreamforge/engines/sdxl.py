"""SDXL on diffusers: the local GPU provider (`local-sdxl-epicrealism`).

Imported only by a worker when a job runs, so processes that never render never load torch.
Device, dtype and memory choices are explicit settings: CUDA runs fp16 (fp32 VAE upcast is left
to the pipeline's `force_upcast` unless an fp16-safe VAE is configured), CPU runs fp32, and
starting noise is always drawn on the CPU so a seed means the same image on any device.
"""

from __future__ import annotations

import os

# Loading must never reach a hub: single-file loading silently goes online without this.
os.environ["HF_HUB_OFFLINE"] = "1"

# Before diffusers and transformers, which import torchvision whenever it is installed.
import dreamforge.engines.torchvision_compat  # noqa: F401  (makes torchvision importable)

# isort: split

import logging
import platform
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UniPCMultistepScheduler,
)
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from transformers.utils import logging as transformers_logging

from dreamforge import __version__
from dreamforge.engines.base import (
    EngineError,
    ModelSpec,
    OutOfMemory,
    RefineRequest,
    RenderRequest,
    Scheduler,
    StepCallback,
)
from dreamforge.engines.device import (
    apply_cpu_threads,
    classify_failure,
    free_cached_memory,
    pick_device,
    pick_dtype,
)
from dreamforge.error_codes import ErrorCode

log = logging.getLogger(__name__)
# Worker logs are structured job events; tqdm bars would only garble them.
diffusers_logging.disable_progress_bar()
transformers_logging.disable_progress_bar()


def make_scheduler(name: str, base_config: Any) -> Any:
    """The sampler `name` configured from the checkpoint's own scheduler config."""
    if name == Scheduler.dpmpp_2m_karras:
        return DPMSolverMultistepScheduler.from_config(
            base_config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
        )
    if name == Scheduler.unipc:
        return UniPCMultistepScheduler.from_config(base_config)
    raise EngineError(ErrorCode.unknown_scheduler, f"scheduler {name!r} is not supported")


@dataclass
class _Conditioning:
    """A prompt encoded once per job and reused by every pipeline call of it."""

    key: tuple[Any, ...]
    tensors: dict[str, Any]


class SDXLEngine:
    """Keeps one SDXL pipeline warm and renders with it; one render at a time.

    GPU levers (CUDA only; none changes CPU results): fp16 weights, SDPA attention and a
    channels-last UNet always; `compile` compiles the UNet once per loaded model; `vae_path` swaps
    in a separate VAE (an fp16-safe one skips SDXL's fp32 upcast); the VAE decodes in tiles above
    `vae_tiling_pixels`.
    """

    def __init__(
        self,
        device: str = "auto",
        dtype: str = "auto",
        cpu_offload: bool = False,
        *,
        compile_unet: bool = False,
        vae_path: str = "",
        vae_tiling_pixels: int = 2048 * 2048,
        cpu_threads: int = 0,
    ) -> None:
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.cpu_threads = apply_cpu_threads(self.device, cpu_threads)
        self.cpu_offload = cpu_offload and self.device == "cuda"
        self.compile_unet = compile_unet and self.device == "cuda"
        self.vae_path = vae_path
        self.vae_tiling_pixels = vae_tiling_pixels
        self._pipe: Any = None
        # The img2img view of `_pipe` (refine): the same modules, so no second UNet in memory.
        self._img2img: Any = None
        self._loaded_key: tuple[str, str] | None = None
        self._base_scheduler_config: Any = None
        self._conditioning: _Conditioning | None = None
        self._lock = threading.Lock()

    def runtime_info(self) -> dict[str, str]:
        """Versions and placement, recorded in every image's recipe."""
        info = {
            "dreamforge": __version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "rng_device": "cpu",
        }
        if self.cpu_threads is not None:
            info["cpu_threads"] = str(self.cpu_threads)
        if self.compile_unet:
            info["compiled_unet"] = "true"
        if self.vae_path:
            info["vae"] = Path(self.vae_path).name
        return info

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
                raise EngineError(
                    ErrorCode.model_load_failed, f"could not load model {model.name!r}: {exc}"
                ) from exc
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
                ErrorCode.model_files_missing, f"model {model.name!r} is registered but {path} is missing"
            )
        extra: dict[str, Any] = {}
        if self.vae_path:
            if not Path(self.vae_path).is_dir():
                raise EngineError(
                    ErrorCode.model_files_missing, f"DF_VAE_MODEL {self.vae_path} is not a folder"
                )
            extra["vae"] = AutoencoderKL.from_pretrained(
                self.vae_path, local_files_only=True, use_safetensors=True, dtype=self.dtype
            )
        if model.layout == "single_file":
            if not model.config_path or not Path(model.config_path).is_dir():
                raise EngineError(
                    ErrorCode.model_files_missing,
                    f"single-file model {model.name!r} has no local config folder",
                )
            return StableDiffusionXLPipeline.from_single_file(
                str(path), config=model.config_path, local_files_only=True, dtype=self.dtype, **extra
            )
        # The downloader keeps only fp16 weights when a repo offers them; fp32 devices upcast them.
        has_fp16 = any(path.glob("unet/*.fp16*.safetensors"))
        has_plain = any(p for p in path.glob("unet/*.safetensors") if ".fp16" not in p.name)
        variant = "fp16" if has_fp16 and (self.dtype == torch.float16 or not has_plain) else None
        if self.device == "cuda" and not self.cpu_offload:
            # Each tensor is read into GPU memory as it loads: no whole copy of the model in host
            # memory first, then a second pass to move it (bench/gpu_sdxl.py's cold load).
            extra["device_map"] = self.device
        return StableDiffusionXLPipeline.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, dtype=self.dtype, variant=variant, **extra
        )

    def _place(self, pipe: Any) -> None:
        if self.cpu_offload:
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(self.device)
        if self.device != "cuda":
            return
        # Scaled-dot-product attention (flash / memory-efficient kernels) instead of the plain one.
        pipe.unet.set_attn_processor(AttnProcessor2_0())
        pipe.unet.to(memory_format=torch.channels_last)
        if self.vae_path and self.dtype == torch.float16:
            # An fp16-safe VAE decodes in half precision; SDXL's own VAE would upcast to fp32.
            pipe.vae.config.force_upcast = False
        if self.compile_unet:
            # Compiled once per loaded model; the first render pays the compile time.
            pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=False)

    def _unload(self) -> None:
        if self._pipe is None:
            return
        self._pipe = None
        self._img2img = None
        self._loaded_key = None
        self._conditioning = None
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def _encode(self, pipe: Any, request: RenderRequest) -> dict[str, Any]:
        """The prompt's embeddings, encoded once and reused while the job's prompt stays the same."""
        do_cfg = request.guidance > 1
        key = (self._loaded_key, request.prompt, request.negative_prompt, do_cfg)
        if self._conditioning is None or self._conditioning.key != key:
            embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
                prompt=request.prompt,
                device=pipe._execution_device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=do_cfg,
                negative_prompt=request.negative_prompt or None,
            )
            self._conditioning = _Conditioning(
                key,
                {
                    "prompt_embeds": embeds,
                    "negative_prompt_embeds": negative,
                    "pooled_prompt_embeds": pooled,
                    "negative_pooled_prompt_embeds": negative_pooled,
                },
            )
        return self._conditioning.tensors

    def _run_pipeline(self, pipe: Any, **kwargs: Any) -> list[Image.Image]:
        """One pipeline call (a seam for tests that count calls or inject device failures)."""
        images: list[Image.Image] = pipe(**kwargs).images
        return images

    def _configure_vae(self, pipe: Any, width: int, height: int) -> None:
        if self.device == "cuda" and width * height > self.vae_tiling_pixels:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()

    def _call(self, pipe: Any, on_step: StepCallback, default_total: int, **kwargs: Any) -> list[Image.Image]:
        """One pipeline call with step reporting; CUDA failures come out as `OutOfMemory`/`DeviceFault`."""

        def step_end(p: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            on_step(step + 1, int(getattr(p, "num_timesteps", default_total)))
            return tensors

        try:
            with torch.inference_mode():
                return self._run_pipeline(pipe, **kwargs, output_type="pil", callback_on_step_end=step_end)
        except Exception as exc:
            # diffusers upcasts SDXL's VAE to fp32 for the decode and casts it back only when the decode
            # returns: an OOM there left it fp32, and every later call of this engine then failed on a
            # half/float mismatch (seen on an H200, bench/gpu_sdxl.py).
            if pipe.vae.dtype != self.dtype:
                pipe.vae.to(dtype=self.dtype)
            failure = classify_failure(exc)
            if failure is None:
                raise
            if isinstance(failure, OutOfMemory):
                # Free what the failed call held before anyone tries a smaller batch.
                del exc
                free_cached_memory()
                raise failure from None
            raise failure from exc

    def render(
        self, model: ModelSpec, request: RenderRequest, seeds: Sequence[int], on_step: StepCallback
    ) -> list[Image.Image]:
        """Render one image per seed in one pipeline call; CPU generators make seeds device-independent."""
        self.load(model)
        with self._lock:
            pipe = self._pipe
            pipe.scheduler = make_scheduler(request.scheduler, self._base_scheduler_config)
            self._configure_vae(pipe, request.width, request.height)
            # One generator per image: each item's noise depends on its own seed alone.
            generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
            return self._call(
                pipe,
                on_step,
                request.steps,
                **self._encode(pipe, request),
                width=request.width,
                height=request.height,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance,
                num_images_per_prompt=len(seeds),
                generator=generators,
            )

    def refine(
        self,
        model: ModelSpec,
        request: RenderRequest,
        image: Image.Image,
        seed: int,
        refine: RefineRequest,
        on_step: StepCallback,
    ) -> Image.Image:
        """Hires fix's second pass: img2img over `image` with the job's prompt, sampler and guidance."""
        self.load(model)
        if refine.executed_steps < 1:
            raise EngineError(
                ErrorCode.engine_error,
                f"denoise {refine.denoise} over {refine.steps} steps runs no step; raise either",
            )
        with self._lock:
            if self._img2img is None:
                # from_pipe shares the loaded modules (UNet, VAE, encoders): no copy, no reload.
                self._img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(self._pipe)
                self._img2img.set_progress_bar_config(disable=True)
            pipe = self._img2img
            pipe.scheduler = make_scheduler(request.scheduler, self._base_scheduler_config)
            self._configure_vae(pipe, image.width, image.height)
            images = self._call(
                pipe,
                on_step,
                refine.executed_steps,
                **self._encode(self._pipe, request),
                image=image,
                strength=refine.denoise,
                num_inference_steps=refine.steps,
                guidance_scale=request.guidance,
                generator=torch.Generator(device="cpu").manual_seed(seed),
            )
            return images[0]
