"""Cold vs warm: the first job after `dreamforge serve` starts (torch's import and the pipeline load
included) over an identical second one; and the pipeline load time over the time the checkpoint's bytes
take to read from disk (target <= 1.5: loading costs little beyond reading).

    python bench/cold_warm.py [--rounds 3] [--no-large]

`cold_warm.first_job` (informational): both jobs timed from POST to the poll that says `succeeded`.
`cold_warm.load_large` (skipped with --no-large and in smoke runs): the target's measurement. A
random-weight pipeline with a ~480 MB UNet, loaded by SDXLEngine.load in this process, alternately with
the tiny one; the read rate is the same files read with 16 MiB buffers in the same sitting. Both the
timed reads and the loads start from disk: each file's pages are evicted from the page cache first
(posix_fadvise DONTNEED on our own files; the shared machine's caches are not dropped), so the rate is
the disk's, as the target says. The two sizes give the load's fixed part and its rate beyond it.
`cold_warm.load` (informational): the tiny model's first load in the service, from the first job's log
line "model ... loaded in N.NNs", over its 4 MB read from disk. At that size the load is module
construction and configs, not bytes (hundreds of times the read), which no loader changes: load_large
carries the target.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from common import SMOKE, Result, embedded_service, median, record, run_job, tiny_model_dir

MODEL = "tiny-sdxl"
JOB = {
    "type": "generate",
    "prompt": "a lighthouse at dusk",
    "width": 64 if SMOKE else 128,
    "height": 64 if SMOKE else 128,
    "steps": 2 if SMOKE else 16,
    "count": 1,
}
TARGET = 1.5
LOADED = re.compile(r"model '(?P<name>.+)' loaded in (?P<seconds>[0-9.]+)s")


def model_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise RuntimeError(f"no model files under {folder}")
    return files


def evict(files: list[Path]) -> None:
    """Drop `files`' pages from the page cache, so the next read of them comes from the disk."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_rate(files: list[Path], repeats: int = 5) -> float:
    """Bytes per second reading `files` start to end from disk, median of `repeats` passes."""
    size = sum(f.stat().st_size for f in files)
    buffer = bytearray(16 << 20)
    laps = []
    for _ in range(repeats):
        evict(files)
        started = time.perf_counter()
        for f in files:
            with f.open("rb", buffering=0) as fh:
                while fh.readinto(buffer):
                    pass
        laps.append(time.perf_counter() - started)
    return size / median(laps)


def _log(client: httpx.Client, root: str, job_id: str) -> list[tuple[datetime, str]]:
    lines = client.get(f"{root}/v1/jobs/{job_id}/logs").raise_for_status().text.splitlines()
    events = [json.loads(line) for line in lines if line.strip()]
    return [(datetime.fromisoformat(e["ts"]), str(e["message"])) for e in events]


def _at(log: list[tuple[datetime, str]], prefix: str) -> datetime:
    return next(ts for ts, message in log if message.startswith(prefix))


def cold_stages(log: list[tuple[datetime, str]]) -> dict[str, float]:
    """The first job's seconds per stage, from its own log: waiting, making the engine (torch's import),
    the load the engine timed itself, and rendering and storing the image."""
    loaded = next((ts, m) for ts, m in log if LOADED.match(m))
    match = LOADED.match(loaded[1])
    assert match is not None
    load = float(match["seconds"])
    started = _at(log, "started on")
    return {
        "queued_s": (started - _at(log, "job accepted")).total_seconds(),
        "engine_and_imports_s": (loaded[0] - started).total_seconds() - load,
        "load_s": load,
        "render_and_store_s": (_at(log, "item 0: stored") - loaded[0]).total_seconds(),
    }


def service_part() -> tuple[Result, Result, dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="df-bench-") as tmp:
        data_dir = Path(tmp) / "var"
        files = model_files(tiny_model_dir())
        size = sum(f.stat().st_size for f in files)
        rate_before = read_rate(files)
        evict(files)
        with embedded_service(data_dir) as root, httpx.Client(timeout=300) as client:
            first, cold = run_job(client, root, JOB)
            second, warm = run_job(client, root, JOB)
            first_log = _log(client, root, first)
            second_log = _log(client, root, second)
        rate_after = read_rate(files)
    stages = cold_stages(first_log)
    warm_render = (_at(second_log, "item 0: stored") - _at(second_log, "started on")).total_seconds()
    rate = median([rate_before, rate_after])
    load = stages["load_s"]
    first_job = Result(
        name="cold_warm.first_job",
        ratio=cold / warm,
        target="informational",
        passed=True,
        unit="s",
        median=cold,
        details={
            "job": JOB,
            "cold_s": round(cold, 3),
            "warm_s": round(warm, 3),
            "cold_stages_s": {k: round(v, 3) for k, v in stages.items()},
            "warm_render_and_store_s": round(warm_render, 3),
        },
    )
    ratio = load / (size / rate)
    load_result = Result(
        name="cold_warm.load",
        ratio=ratio,
        target="informational (the target is load_large's)",
        passed=True,
        unit="s",
        median=load,
        details={
            "model": MODEL,
            "load_s": load,
            "checkpoint_bytes": size,
            "read_mb_per_s": round(rate / 1e6),
            "read_s": round(size / rate, 5),
            "read_mb_per_s_before_after": [round(rate_before / 1e6), round(rate_after / 1e6)],
            "page_cache": "evicted for the model's files before each read and before the service starts",
            "note": "a 4 MB load is module construction and configs, not bytes; see load_large",
        },
    )
    return first_job, load_result, {"bytes": size, "load_s": load}


def _build_large(tiny: Path, dest: Path) -> Path:
    """The tiny pipeline with its UNet 16 times wider (~120M parameters, fp32, ~480 MB) and otherwise the
    same modules: the two loads differ in bytes alone. A loadable (noise-drawing) SDXL-architecture
    pipeline."""
    import torch

    from dreamforge.registry.tiny import tiny_unet

    shutil.copytree(tiny, dest)
    narrow = json.loads((tiny / "unet" / "config.json").read_text())["block_out_channels"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = tiny_unet(block_out_channels=(16 * narrow[0], 16 * narrow[1]))
    shutil.rmtree(dest / "unet")
    unet.save_pretrained(dest / "unet", safe_serialization=True)
    return dest


def large_part(rounds: int, tiny_service: dict[str, Any]) -> Result:
    """Loads of the large and the tiny pipeline, alternating, by SDXLEngine.load in this process."""
    from dreamforge.engines.base import ModelSpec
    from dreamforge.engines.sdxl import SDXLEngine

    with tempfile.TemporaryDirectory(prefix="df-bench-") as tmp:
        tiny = tiny_model_dir()
        started = time.monotonic()
        large = _build_large(tiny, Path(tmp) / "large")
        build_s = time.monotonic() - started
        models = {
            name: (ModelSpec(uuid.uuid4(), name, "diffusers", str(folder), None, name), model_files(folder))
            for name, folder in (("large", large), ("tiny", tiny))
        }
        engine = SDXLEngine(device="cpu")
        # A process's first load also imports the encoders' modules; the service's first job paid that.
        engine.load(models["tiny"][0])
        loads: dict[str, list[float]] = {name: [] for name in models}
        rates: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(rounds):
            for name, (spec, files) in models.items():
                rates[name].append(read_rate(files, repeats=3))
                evict(files)
                loads[name].append(engine.load(spec))
        sizes = {name: sum(f.stat().st_size for f in files) for name, (_, files) in models.items()}
    load = {name: median(v) for name, v in loads.items()}
    rate = {name: median(v) for name, v in rates.items()}
    # Two sizes, one line: the load's fixed part (at zero bytes) and its rate for the bytes beyond it.
    slope = (load["large"] - load["tiny"]) / (sizes["large"] - sizes["tiny"])
    fixed = load["tiny"] - slope * sizes["tiny"]
    ratio = load["large"] / (sizes["large"] / rate["large"])
    return Result(
        name="cold_warm.load_large",
        ratio=ratio,
        target=f"<= {TARGET}",
        passed=ratio <= TARGET,
        unit="s",
        median=load["large"],
        details={
            "checkpoint_bytes": sizes,
            "load_s": {name: [round(s, 3) for s in v] for name, v in loads.items()},
            "read_mb_per_s": {name: round(v / 1e6) for name, v in rate.items()},
            "read_s_large": round(sizes["large"] / rate["large"], 3),
            "fixed_s": round(fixed, 3),
            "load_mb_per_s_beyond_fixed": round(1 / slope / 1e6) if slope > 0 else None,
            "tiny_first_load_in_service_s": tiny_service["load_s"],
            "build_large_s": round(build_s, 1),
            "page_cache": "evicted for the model's files before each timed read and each load",
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-large", action="store_true", help="Skip the large-checkpoint data point.")
    args = parser.parse_args()
    started = time.monotonic()
    first_job, load, tiny = service_part()
    large = None if args.no_large or SMOKE else large_part(args.rounds, tiny)
    wall = round(time.monotonic() - started, 1)
    for result in (first_job, large, load):
        if result is not None:
            result.details["wall_s"] = wall
            record(result)


if __name__ == "__main__":
    main()
