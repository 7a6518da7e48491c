"""The CUDA path at full SDXL size, with random weights: load, render, compile and a real OOM.

Run by hand on a CUDA machine (no GPU runs `make bench`): `python bench/gpu_sdxl.py --out DIR`.
It builds a full-size SDXL-architecture pipeline (2.6 G-parameter UNet, CLIP-L and OpenCLIP-bigG
encoders, the SDXL VAE) with random fp16 weights, saves it as a diffusers folder and loads it through
`SDXLEngine`, the production code path, so device, dtype, SDPA, channels-last, the fp32 VAE upcast and
`torch.compile` are what a real EpicRealism-XL job gets. Only the weights (and a tiny tokenizer
vocabulary) differ, and step time does not depend on weight values. Each phase appends to
DIR/gpu_sdxl.json as it ends, so a run cut short still reports what it measured.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import itertools

from dreamforge.engines.base import ModelSpec, OutOfMemory, RenderRequest
from dreamforge.engines.sdxl import SDXLEngine
from dreamforge.registry.tiny import build_tiny_pipeline, save_pipeline

GIB = 1024**3
PROMPT = "a lighthouse on a cliff at dusk, film photograph"
NEGATIVE = "blurry, lowres"


class Report:
    """Results by phase, rewritten to disk after each phase."""

    def __init__(self, out: Path) -> None:
        self.path = out / "gpu_sdxl.json"
        self.started = time.perf_counter()
        self.data: dict[str, Any] = {}

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.started

    def put(self, phase: str, value: Any) -> None:
        """Record one phase's result and print it as one line."""
        self.data[phase] = value
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        print(f"[{self.elapsed():6.1f}s] {phase}: {json.dumps(value, default=str)}", flush=True)


def build_full_size(dest: Path, device: str, small: bool) -> int:
    """Write a full-size random-weight SDXL diffusers folder (fp16 variant) and return its bytes."""
    import importlib

    import torch

    # Both ship partial annotations (untyped constructors); treat them as dynamic, as registry.tiny does.
    diffusers: Any = importlib.import_module("diffusers")
    transformers: Any = importlib.import_module("transformers")

    tiny = build_tiny_pipeline(Path(tempfile.mkdtemp()) / "tiny")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(tiny / "tokenizer")
    tokenizer_2 = transformers.CLIPTokenizer.from_pretrained(tiny / "tokenizer_2")
    # --small (a CPU dry run of this script) divides every width by 8 and keeps the shapes' structure.
    w = 8 if small else 1

    def clip(width: int, layers: int, heads: int, act: str, pad: int) -> Any:
        # A CLIP text encoder config: the tiny vocabulary, the real widths (the MLP is 4x wide).
        return transformers.CLIPTextConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            hidden_size=width // w,
            intermediate_size=4 * width // w,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            hidden_act=act,
            projection_dim=width // w,
            pad_token_id=pad,
        )

    # The published SDXL base shapes: CLIP ViT-L/14, OpenCLIP ViT-bigG/14, the 2.6 G UNet, the SDXL VAE.
    te1 = clip(768, 12, 12, "quick_gelu", tokenizer.eos_token_id)
    te2 = clip(1280, 32, 20, "gelu", tokenizer_2.pad_token_id)
    dtype = torch.float16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    # Random init on the GPU: on the CPU the 3.5 G parameters take minutes to initialise.
    with torch.device(device):
        text_encoder = transformers.CLIPTextModel(te1).to(dtype)
        text_encoder_2 = transformers.CLIPTextModelWithProjection(te2).to(dtype)
        unet = diffusers.UNet2DConditionModel(
            sample_size=128,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320 // w, 640 // w, 1280 // w),
            layers_per_block=2,
            attention_head_dim=(5, 10, 20),
            transformer_layers_per_block=(1, 2, 10),
            cross_attention_dim=2048 // w,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256 // w,
            projection_class_embeddings_input_dim=(1280 + 6 * 256) // w,
            norm_num_groups=32 // w * 2 if small else 32,
        ).to(dtype)
        vae = diffusers.AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128 // w, 256 // w, 512 // w, 512 // w),
            layers_per_block=2,
            latent_channels=4,
            sample_size=1024,
            scaling_factor=0.13025,
            force_upcast=True,
            norm_num_groups=32 // w * 2 if small else 32,
        ).to(dtype)
    scheduler = diffusers.EulerDiscreteScheduler.from_pretrained(tiny / "scheduler")
    variant = "fp16" if device == "cuda" else None
    save_pipeline(
        dest, [vae, text_encoder, text_encoder_2, unet], [tokenizer, tokenizer_2], scheduler, variant
    )
    params = sum(p.numel() for p in unet.parameters())
    del unet, vae, text_encoder, text_encoder_2
    if device == "cuda":
        torch.cuda.empty_cache()
    shutil.rmtree(tiny.parent, ignore_errors=True)
    print(f"unet parameters: {params / 1e9:.3f} G", flush=True)
    return sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())


def drop_page_cache() -> bool:
    """Ask the kernel to forget cached file pages (root only); False where it refuses."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def read_rate(folder: Path) -> float:
    """Bytes per second reading every weight file of `folder` with plain 16 MiB reads."""
    total, started = 0, time.perf_counter()
    for f in sorted(folder.rglob("*.safetensors")):
        with f.open("rb", buffering=0) as fh:
            while chunk := fh.read(16 * 1024 * 1024):
                total += len(chunk)
    return total / (time.perf_counter() - started)


def request(size: int, steps: int) -> RenderRequest:
    """The recipe every timed render uses: SDXL's native size, DPM++ 2M Karras, CFG on."""
    return RenderRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        width=size,
        height=size,
        steps=steps,
        guidance=5.0,
        scheduler="dpmpp_2m_karras",
    )


def timed_render(engine: SDXLEngine, spec: ModelSpec, req: RenderRequest, batch: int) -> dict[str, Any]:
    """One render of `batch` images: wall time, the denoise loop's time per step, peak memory."""
    import torch

    stamps: list[float] = []
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    images = engine.render(
        spec, req, list(range(batch)), lambda step, total: stamps.append(time.perf_counter())
    )
    wall = time.perf_counter() - started
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    result: dict[str, Any] = {
        "batch": batch,
        "wall_s": round(wall, 3),
        "step_ms_median": round(statistics.median(steps) * 1000, 2) if steps else None,
        "first_step_end_s": round(stamps[0] - started, 3) if stamps else None,
        "after_last_step_s": round(time.perf_counter() - stamps[-1], 3) if stamps else None,
        "images_per_s": round(batch / wall, 3),
        "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None,
        "images": len(images),
    }
    started = time.perf_counter()
    result["png_bytes_first"] = len(png(images[0]))
    result["png_encode_s"] = round(time.perf_counter() - started, 3)
    return result


def png(image: Any) -> bytes:
    """The image as PNG, as the artifact store receives it (PIL defaults, as recipe.embed uses)."""
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def renders(report: Report, engine: SDXLEngine, spec: ModelSpec, label: str, size: int, steps: int) -> None:
    """Warm-up, then three batch-1 renders and one each of batch 2 and 4."""
    req = request(size, steps)
    report.put(f"{label}_first_render", timed_render(engine, spec, req, 1))
    runs = [timed_render(engine, spec, req, 1) for _ in range(3)]
    report.put(
        f"{label}_batch1",
        {"wall_s_median": statistics.median(r["wall_s"] for r in runs), "runs": runs},
    )
    for batch in (2, 4):
        report.put(f"{label}_batch{batch}", timed_render(engine, spec, req, batch))


def oom(report: Report, engine: SDXLEngine, spec: ModelSpec, size: int, steps: int) -> None:
    """Fill the GPU to a few GiB, then halve a batch of 4 as the runner does until it fits."""
    import torch

    # What the allocator caches counts as used on the device: hand it back so the filler is exact.
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    # Batch 2 at 1024² needs about 8.5 GiB beyond the weights and batch 4 about 16.5 (peaks above).
    reserve = 10 * GIB
    filler = torch.empty(max(0, free - reserve), dtype=torch.uint8, device="cuda")
    outcome: list[dict[str, Any]] = []
    batch = 4
    while batch >= 1:
        started = time.perf_counter()
        try:
            result = timed_render(engine, spec, request(size, steps), batch)
            outcome.append({"batch": batch, "ok": True, "wall_s": result["wall_s"]})
            break
        except OutOfMemory as exc:
            outcome.append(
                {
                    "batch": batch,
                    "ok": False,
                    "code": str(exc.code),
                    "message": exc.message[:160],
                    "s_to_fail": round(time.perf_counter() - started, 2),
                    "allocated_gib_after": round(torch.cuda.memory_allocated() / GIB, 2),
                }
            )
            batch //= 2
        except Exception as exc:  # reported, not raised: the phases after this one still run
            outcome.append({"batch": batch, "ok": False, "unexpected": repr(exc)[:300]})
            break
    del filler
    torch.cuda.empty_cache()
    after = timed_render(engine, spec, request(size, steps), 2)
    report.put(
        "oom",
        {
            "gpu_total_gib": round(total / GIB, 1),
            "free_left_gib": round(reserve / GIB, 1),
            "attempts": outcome,
            "after_release_batch2": after,
        },
    )


def main() -> None:
    """Run every phase that fits in the time budget, writing results as they come."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "df-gpu")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--small", action="store_true", help="a CPU dry run at 1/8 width (checks the script)")
    parser.add_argument("--load-only", action="store_true", help="the cold load and two renders, no more")
    parser.add_argument(
        "--budget", type=float, default=480.0, help="skip compile when past this many seconds"
    )
    args = parser.parse_args()
    device = "cpu" if args.small else "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report(args.out)

    import diffusers
    import torch
    import transformers

    report.put(
        "machine",
        {
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else "none (--small)",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
    )
    folder = args.work / "sdxl-random"
    if folder.exists():
        shutil.rmtree(folder)
    started = time.perf_counter()
    size_bytes = build_full_size(folder, device, args.small)
    report.put("build", {"bytes": size_bytes, "s": round(time.perf_counter() - started, 1)})

    spec = ModelSpec(
        id=uuid.uuid4(),
        name="sdxl-random",
        layout="diffusers",
        path=str(folder),
        config_path=None,
        sha256="x",
    )
    dropped = drop_page_cache()
    rate = read_rate(folder)
    dropped = drop_page_cache() and dropped
    engine = SDXLEngine(device=device, dtype="auto")
    load_s = engine.load(spec)
    expected = size_bytes / rate
    report.put(
        "cold_load",
        {
            "page_cache_dropped": dropped,
            "disk_read_gb_s": round(rate / 1e9, 2),
            "load_s": round(load_s, 2),
            "bytes_over_rate_s": round(expected, 2),
            "ratio": round(load_s / expected, 3),
            "runtime": engine.runtime_info(),
            "weights_gib_on_gpu": round(torch.cuda.memory_allocated() / GIB, 2) if device == "cuda" else None,
        },
    )
    if args.load_only:
        report.put("eager_first_render", timed_render(engine, spec, request(args.size, args.steps), 1))
        report.put("eager_second_render", timed_render(engine, spec, request(args.size, args.steps), 1))
        return
    renders(report, engine, spec, "eager", args.size, args.steps)
    if device != "cuda":
        return
    oom(report, engine, spec, args.size, args.steps)

    del engine
    torch.cuda.empty_cache()
    if report.elapsed() > args.budget:
        report.put("compiled", {"skipped": f"past the {args.budget:.0f} s budget"})
        return
    compiled = SDXLEngine(device="cuda", dtype="auto", compile_unet=True)
    report.put("compiled_load", {"load_s": round(compiled.load(spec), 2), "runtime": compiled.runtime_info()})
    req = request(args.size, args.steps)
    report.put("compiled_first_render", timed_render(compiled, spec, req, 1))
    runs = [timed_render(compiled, spec, req, 1) for _ in range(3)]
    report.put(
        "compiled_batch1", {"wall_s_median": statistics.median(r["wall_s"] for r in runs), "runs": runs}
    )


if __name__ == "__main__":
    main()
