"""Device and dtype choice, and the CUDA failures a worker must treat specially; shared by torch engines.

Imported only by engines, when a job runs: it imports torch.
"""

from __future__ import annotations

import gc
import os

import torch

from dreamforge.engines.base import DeviceFault, EngineError, OutOfMemory
from dreamforge.error_codes import ErrorCode

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Allocation failures that reach Python as a plain RuntimeError rather than OutOfMemoryError.
_OOM_MARKERS = ("out of memory", "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED")
# After these the CUDA context is poisoned: every later call in this process fails too.
_FATAL_MARKERS = (
    "device-side assert",
    "illegal memory access",
    "unspecified launch failure",
    "misaligned address",
    "CUDA error: an illegal instruction",
    "uncorrectable ECC error",
)


def pick_device(device: str) -> str:
    """`device` itself, or for `auto` the best one present: CUDA, then Apple MPS, then CPU."""
    if device != "auto":
        if device == "cuda" and not torch.cuda.is_available():
            raise EngineError(ErrorCode.device_unavailable, "DF_DEVICE=cuda but no CUDA device is visible")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """`dtype` itself, or for `auto` half precision on GPUs and fp32 on CPUs (no fast fp16 kernels)."""
    if dtype != "auto":
        return DTYPES[dtype]
    return torch.float16 if device in ("cuda", "mps") else torch.float32


def default_cpu_threads() -> int:
    """One fewer than the cores this process may use, at least one: the spare core serves the API,
    encodes images and fans events out while a render runs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


def apply_cpu_threads(device: str, threads: int) -> int | None:
    """Set torch's intra-op threads for CPU renders (`threads`, or 0 for the default); None elsewhere.

    Process-wide: every torch engine in a worker shares the one setting.
    """
    if device != "cpu":
        return None
    count = threads or default_cpu_threads()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def classify_failure(exc: BaseException) -> EngineError | None:
    """`OutOfMemory` or `DeviceFault` for the CUDA failures a worker must treat specially, else None."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return OutOfMemory(str(exc).splitlines()[0] if str(exc) else "CUDA out of memory")
    if isinstance(exc, RuntimeError):
        text = str(exc)
        if any(marker in text for marker in _FATAL_MARKERS):
            return DeviceFault(f"unrecoverable device error: {text.splitlines()[0]}")
        if any(marker in text for marker in _OOM_MARKERS):
            return OutOfMemory(text.splitlines()[0])
    return None


def free_cached_memory() -> None:
    """Return what a failed call held to the allocator before anyone tries again with less."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
