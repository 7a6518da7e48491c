"""Super-resolution upscalers (ESRGAN, Real-ESRGAN, SwinIR, ...) loaded with spandrel.

spandrel detects the architecture and scale from the weights, so no network code lives here. Only
`.safetensors` files are loaded (pickles can run code). Imported only by workers and the model
commands, when they need it: it imports torch.

Large inputs run in overlapping tiles (`DF_UPSCALE_TILE`), so a 4x model's activations stay within
VRAM; each tile's margin is cut away before it is pasted, so tile seams do not show.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image

from dreamforge import __version__
from dreamforge.engines.base import EngineError, ModelSpec, OutOfMemory, StepCallback
from dreamforge.engines.device import (
    apply_cpu_threads,
    classify_failure,
    free_cached_memory,
    pick_device,
    pick_dtype,
)
from dreamforge.engines.torchvision_compat import ensure_torchvision_importable
from dreamforge.error_codes import ErrorCode

# Pixels of context each tile gets on every side; more than the receptive field of common SR nets'
# last layers, so a tile's kept centre matches what the whole image would give.
TILE_OVERLAP = 32


def import_spandrel() -> ModuleType:
    """spandrel, imported once torchvision can be (`torchvision_compat`)."""
    ensure_torchvision_importable()
    return import_module("spandrel")


@dataclass(frozen=True)
class UpscalerInfo:
    """What the registry records about an upscaler file: its architecture and native scale."""

    architecture: str
    architecture_name: str
    scale: int
    supports_half: bool
    tags: tuple[str, ...]


def _load_descriptor(path: Path) -> Any:
    if path.suffix.lower() != ".safetensors":
        raise EngineError(
            ErrorCode.model_load_failed,
            f"{path.name}: only .safetensors upscalers are loaded (pickle files can run code)",
        )
    if not path.is_file():
        raise EngineError(ErrorCode.model_files_missing, f"upscaler file {path} is missing")
    spandrel = import_spandrel()
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_file(str(path))
    except spandrel.UnsupportedModelError:
        raise EngineError(
            ErrorCode.model_load_failed,
            f"{path.name}: spandrel recognises no upscaler architecture in these weights",
        ) from None
    except Exception as exc:
        raise EngineError(ErrorCode.model_load_failed, f"{path.name}: could not load: {exc}") from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose not in (
        "SR",
        "FaceSR",
    ):
        raise EngineError(
            ErrorCode.model_load_failed,
            f"{path.name} is a {descriptor.architecture.name} {descriptor.purpose} model, not an upscaler",
        )
    if descriptor.scale < 2 or descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise EngineError(
            ErrorCode.model_load_failed,
            f"{path.name}: a {descriptor.scale}x model with {descriptor.input_channels} input channels "
            "cannot upscale RGB images",
        )
    return descriptor


def describe_upscaler(path: Path) -> UpscalerInfo:
    """Detect `path`'s architecture and scale; raises `EngineError` if it is no RGB upscaler."""
    descriptor = _load_descriptor(path)
    return UpscalerInfo(
        architecture=str(descriptor.architecture.id),
        architecture_name=str(descriptor.architecture.name),
        scale=int(descriptor.scale),
        supports_half=bool(descriptor.supports_half),
        tags=tuple(str(t) for t in descriptor.tags),
    )


def plan_passes(native: int, scale: int) -> int:
    """How many times a `native`x model runs to reach at least `scale`x (A1111 does the same)."""
    return max(1, math.ceil(math.log(scale, native) - 1e-9))


def tile_grid(width: int, height: int, tile: int) -> list[tuple[int, int, int, int]]:
    """The (left, top, right, bottom) boxes covering the image, each at most `tile` square."""
    if tile <= 0 or (width <= tile and height <= tile):
        return [(0, 0, width, height)]
    xs = range(0, width, tile)
    ys = range(0, height, tile)
    return [(x, y, min(x + tile, width), min(y + tile, height)) for y in ys for x in xs]


class SpandrelUpscaler:
    """Keeps one upscaler warm on the worker's device and enlarges images with it, one at a time."""

    def __init__(
        self, device: str = "auto", dtype: str = "auto", *, tile: int = 512, cpu_threads: int = 0
    ) -> None:
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        apply_cpu_threads(self.device, cpu_threads)
        self.tile = tile
        self._descriptor: Any = None
        self._loaded_key: tuple[str, str] | None = None
        self._lock = threading.Lock()

    def runtime_info(self) -> dict[str, str]:
        """Versions, placement and the loaded architecture, for the recipe."""
        spandrel = import_spandrel()
        info = {
            "dreamforge": __version__,
            "torch": torch.__version__,
            "spandrel": str(spandrel.__version__),
            "device": self.device,
            "dtype": str(self._dtype_for(self._descriptor)).removeprefix("torch."),
        }
        if self._descriptor is not None:
            info["architecture"] = str(self._descriptor.architecture.id)
        return info

    def _dtype_for(self, descriptor: Any) -> torch.dtype:
        if descriptor is None or self.dtype == torch.float32:
            return self.dtype
        if self.dtype == torch.float16 and not descriptor.supports_half:
            return torch.float32
        if self.dtype == torch.bfloat16 and not descriptor.supports_bfloat16:
            return torch.float32
        return self.dtype

    def load(self, model: ModelSpec) -> float:
        """Load `model` unless it is already warm; returns the seconds it took."""
        key = (str(model.id), model.sha256)
        with self._lock:
            if self._loaded_key == key:
                return 0.0
            self._descriptor = None
            self._loaded_key = None
            started = time.perf_counter()
            descriptor = _load_descriptor(Path(model.path))
            descriptor.to(self.device).eval()
            descriptor.to(self._dtype_for(descriptor))
            self._descriptor = descriptor
            self._loaded_key = key
            return time.perf_counter() - started

    def upscale(self, model: ModelSpec, image: Image.Image, scale: int, on_step: StepCallback) -> Image.Image:
        """`image` enlarged exactly `scale` times: the model as often as needed, then Lanczos to size."""
        self.load(model)
        with self._lock:
            descriptor = self._descriptor
            native = int(descriptor.scale)
            passes = plan_passes(native, scale)
            current = image.convert("RGB")
            # Each pass's tiles are steps; the grid of later passes follows from the first's output.
            sizes = [(current.width * native**i, current.height * native**i) for i in range(passes)]
            total = sum(len(tile_grid(w, h, self.tile)) for w, h in sizes)
            done = 0

            def tile_done() -> None:
                nonlocal done
                done += 1
                on_step(done, total)

            try:
                for _ in range(passes):
                    current = self._one_pass(descriptor, current, tile_done)
            except EngineError:
                raise
            except Exception as exc:
                failure = classify_failure(exc)
                if failure is None:
                    raise
                if isinstance(failure, OutOfMemory):
                    del exc
                    free_cached_memory()
                    raise OutOfMemory(
                        f"{failure.message}; lower DF_UPSCALE_TILE (now {self.tile}) for smaller tiles"
                    ) from None
                raise failure from exc
        target = (image.width * scale, image.height * scale)
        if current.size != target:
            current = current.resize(target, Image.Resampling.LANCZOS)
        return current

    def _one_pass(self, descriptor: Any, image: Image.Image, tile_done: Any) -> Image.Image:
        native = int(descriptor.scale)
        dtype = self._dtype_for(descriptor)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        height, width = pixels.shape[2], pixels.shape[3]
        out = torch.zeros((1, 3, height * native, width * native), dtype=torch.float32)
        with torch.inference_mode():
            for left, top, right, bottom in tile_grid(width, height, self.tile):
                # The tile plus its context margin, clipped to the image.
                x0, y0 = max(0, left - TILE_OVERLAP), max(0, top - TILE_OVERLAP)
                x1, y1 = min(width, right + TILE_OVERLAP), min(height, bottom + TILE_OVERLAP)
                # spandrel pads to the architecture's size requirements and crops the padding off again.
                result = descriptor(pixels[:, :, y0:y1, x0:x1].to(self.device, dtype)).float().cpu()
                keep = result[
                    :,
                    :,
                    (top - y0) * native : (bottom - y0) * native,
                    (left - x0) * native : (right - x0) * native,
                ]
                out[:, :, top * native : bottom * native, left * native : right * native] = keep
                tile_done()
        array = (out[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        return Image.fromarray(array, "RGB")
