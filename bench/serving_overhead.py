"""Serving overhead: a job's end-to-end latency through the service (POST /v1/jobs until its SSE stream
says `done`, its artifact stored) over a direct warm `pipe()` call of the same tiny model with the same
parameters, in interleaved pairs. Targets: median pair ratio <= 1.02 embedded, <= 1.04 distributed.

    python bench/serving_overhead.py [--pairs 20] [--size 256] [--steps 30] [--only embedded|distributed]

The direct call runs in this process on the engine's own loading path (SDXLEngine: CPU float32, and
torch's threads as the service sets them, `DF_CPU_THREADS`'s default) with the service's default
sampler, warmed first: `pipe(prompt, width, height, num_inference_steps, guidance_scale, generator)` to
a PIL image. Each pair has a prompt of its own, the same on both sides. The call and the
service never run at once (2 cores): a pair is one direct call and one job, one after the other,
alternating which goes first, with a pause between them so that neither inherits the other's
spinning threads.

Where the milliseconds go comes from each job's own "timings (ms): ..." log line (worker/runner.py):
the median of each phase over the pairs, and `unaccounted` = end-to-end - queue_wait - total, i.e.
the HTTP request until the job row exists, the final commit, and the fan-out of `done` to the stream.
`denoise_over_direct` is the engine call's time over the direct call's in the same pair (step callbacks
and whatever the service does on the CPU meanwhile).

The distributed topology (API + one Celery worker on Postgres, Redis and moto's S3, built from the
tests' parts) is skipped, with the reason printed and noted in the embedded result, when Postgres or
Redis does not answer on loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from common import (
    ROOT,
    SMOKE,
    Result,
    distributed_service,
    drop_result,
    embedded_service,
    median,
    pct,
    record,
    services_reachable,
    tiny_model_dir,
)

MODEL = "tiny-sdxl"
PROMPT = "a lighthouse on a cliff at dusk"
SEED = 1234
GUIDANCE = 7.0
SCHEDULER = "dpmpp_2m_karras"
TARGETS = {"embedded": 1.02, "distributed": 1.04}
# Seconds between the two halves of a pair: torch's idle threads spin a little before they sleep.
GAP_SECONDS = 0.3
TIMINGS = re.compile(r"^timings \(ms\): (?P<fields>.*)$")


@dataclass
class Pair:
    """One direct call and one job, timed in the same sitting."""

    direct_ms: float
    service_ms: float
    phases: dict[str, float]
    progress_events: int

    @property
    def ratio(self) -> float:
        return self.service_ms / self.direct_ms


@dataclass
class Direct:
    """The tiny pipeline, loaded as the engine loads it, warm in this process."""

    model_dir: Path
    size: int
    steps: int
    pipe: Any = field(default=None, init=False)

    def load(self) -> None:
        from dreamforge.engines.base import ModelSpec
        from dreamforge.engines.sdxl import SDXLEngine, make_scheduler

        engine = SDXLEngine(device="cpu")
        spec = ModelSpec(
            id=uuid.uuid4(),
            name=MODEL,
            layout="diffusers",
            path=str(self.model_dir),
            config_path=None,
            sha256="",
        )
        engine.load(spec)
        self.pipe = engine._pipe
        self.pipe.scheduler = make_scheduler(SCHEDULER, engine._base_scheduler_config)

    def __call__(self, prompt: str) -> float:
        """Milliseconds of one call, to a PIL image."""
        import torch

        started = time.perf_counter()
        images = self.pipe(
            prompt=prompt,
            width=self.size,
            height=self.size,
            num_inference_steps=self.steps,
            guidance_scale=GUIDANCE,
            generator=torch.Generator(device="cpu").manual_seed(SEED),
        ).images
        elapsed = (time.perf_counter() - started) * 1000
        assert images[0].size == (self.size, self.size)
        return elapsed


def _events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) of an SSE response; keep-alive comments are skipped."""
    kind, data = "message", list[str]()
    for line in response.iter_lines():
        if line == "":
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").removeprefix(" "))


def job_body(prompt: str, size: int, steps: int) -> dict[str, Any]:
    return {
        "type": "generate",
        "prompt": prompt,
        "width": size,
        "height": size,
        "steps": steps,
        "guidance": GUIDANCE,
        "scheduler": SCHEDULER,
        "seed": SEED,
        "format": "png",
    }


def timed_job(client: httpx.Client, base: str, body: dict[str, Any]) -> tuple[str, float, int]:
    """POST a job and follow its SSE stream to `done`: its id, the milliseconds from sending the POST
    to receiving `done`, and how many progress events the stream carried."""
    started = time.perf_counter()
    job_id = str(client.post(f"{base}/jobs", json=body).raise_for_status().json()["job"]["id"])
    progress, artifact, done = 0, False, None
    with client.stream("GET", f"{base}/jobs/{job_id}/progress/stream") as response:
        response.raise_for_status()
        for kind, data in _events(response):
            if kind == "done":
                done = data
                break
            progress += kind == "progress"
            artifact = artifact or kind == "artifact"
    elapsed = (time.perf_counter() - started) * 1000
    if done is None or done.get("status") != "succeeded" or not artifact:
        raise RuntimeError(f"job {job_id} ended {done} (artifact event seen: {artifact})")
    return job_id, elapsed, progress


def job_timings(client: httpx.Client, base: str, job_id: str) -> dict[str, float]:
    """The phases of the job's "timings (ms)" log line (worker/runner.py)."""
    for line in client.get(f"{base}/jobs/{job_id}/logs").raise_for_status().text.splitlines():
        match = TIMINGS.match(json.loads(line)["message"]) if line.strip() else None
        if match:
            return {k: float(v) for k, v in (pair.split("=") for pair in match["fields"].split())}
    raise RuntimeError(f"job {job_id} logged no timings line")


def measure(base: str, direct: Direct, pairs: int) -> list[Pair]:
    """`pairs` interleaved (direct call, job) pairs against the service at `base` (its /v1 root)."""
    out = []
    with httpx.Client(timeout=300) as client:
        # The first job loads the model and warms the service's paths; the direct call was warmed before.
        timed_job(client, base, job_body(f"{PROMPT}, warm-up", direct.size, direct.steps))
        for index in range(pairs):
            # A prompt of its own per pair, as users send: the engine's cache of the last prompt's
            # embeddings would otherwise spare the service the text encoding the direct call does.
            prompt = f"{PROMPT}, take {index}"
            body = job_body(prompt, direct.size, direct.steps)
            if index % 2:
                time.sleep(GAP_SECONDS)
                job_id, service_ms, progress = timed_job(client, base, body)
                time.sleep(GAP_SECONDS)
                direct_ms = direct(prompt)
            else:
                time.sleep(GAP_SECONDS)
                direct_ms = direct(prompt)
                time.sleep(GAP_SECONDS)
                job_id, service_ms, progress = timed_job(client, base, body)
            out.append(Pair(direct_ms, service_ms, job_timings(client, base, job_id), progress))
    return out


def summarize(topology: str, pairs: list[Pair], size: int, steps: int, extra: dict[str, Any]) -> Result:
    """The topology's Result: median pair ratio, and the median of each phase with what is unaccounted."""
    import torch

    phases = {name: median([p.phases[name] for p in pairs]) for name in pairs[0].phases}
    unaccounted = median([p.service_ms - p.phases["queue_wait"] - p.phases["total"] for p in pairs])
    in_total = median(
        [
            p.phases["total"] - sum(v for k, v in p.phases.items() if k not in ("queue_wait", "total"))
            for p in pairs
        ]
    )
    ratio = median([p.ratio for p in pairs])
    service = [p.service_ms for p in pairs]
    outside = [p.service_ms - p.phases["denoise"] for p in pairs]
    target = TARGETS[topology]
    return Result(
        name=f"serving_overhead.{topology}",
        ratio=ratio,
        target=f"<= {target} (median of service/direct pairs)",
        passed=ratio <= target,
        unit="ms",
        median=median(service),
        p95=pct(service, 0.95),
        details={
            "direct_ms": round(median([p.direct_ms for p in pairs]), 1),
            "service_ms": round(median(service), 1),
            "overhead_ms": round(median([p.service_ms - p.direct_ms for p in pairs]), 1),
            "pairs": len(pairs),
            "size": f"{size}x{size}",
            "steps": steps,
            "pixels": size * size,
            "torch_threads": torch.get_num_threads(),
            "phases_ms": {k: round(v, 1) for k, v in phases.items()},
            "unaccounted_ms": round(unaccounted, 1),
            "runner_bookkeeping_ms": round(in_total, 1),
            "denoise_over_direct_ms": round(median([p.phases["denoise"] - p.direct_ms for p in pairs]), 1),
            # The service's time outside its engine call, which a burst on the shared machine during
            # a denoise cannot swamp, and the ratio it makes on the direct call (denoise taken as equal).
            "outside_denoise_ms": round(median(outside), 1),
            "ratio_outside_denoise": round(
                median([(p.direct_ms + o) / p.direct_ms for p, o in zip(pairs, outside, strict=True)]), 3
            ),
            "progress_events": median([float(p.progress_events) for p in pairs]),
            "ratios": [round(p.ratio, 3) for p in pairs],
            "load_avg_1m": round(os.getloadavg()[0], 2),
            **extra,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=1 if SMOKE else 20)
    # Chosen so that a direct call takes about a second on the 2-core benchmark machine.
    parser.add_argument("--size", type=int, default=64 if SMOKE else 256)
    parser.add_argument("--steps", type=int, default=2 if SMOKE else 30)
    parser.add_argument("--only", choices=sorted(TARGETS))
    args = parser.parse_args()
    # The tests' building blocks (Postgres database, moto's S3, service processes).
    sys.path.insert(0, str(ROOT / "tests"))
    results: list[Result] = []
    skipped: str | None = None
    with tempfile.TemporaryDirectory(prefix="df-bench-") as tmp:
        data_dir = Path(tmp) / "var"
        with embedded_service(data_dir) as root:
            # The weights the service registered: both sides render with the very same model.
            direct = Direct(tiny_model_dir(), args.size, args.steps)
            direct.load()
            for take in range(2):
                direct(f"{PROMPT}, warm-up {take}")
            if args.only != "distributed":
                pairs = measure(f"{root}/v1", direct, args.pairs)
                results.append(summarize("embedded", pairs, args.size, args.steps, {}))
        if args.only != "embedded":
            skipped = services_reachable()
            if skipped is None:
                with distributed_service(Path(tmp) / "distributed") as root:
                    base = f"{root}/v1"
                    pairs = measure(base, direct, args.pairs)
                results.append(summarize("distributed", pairs, args.size, args.steps, {}))
            else:
                print(f"serving_overhead.distributed skipped: {skipped}", flush=True)
                drop_result("serving_overhead.distributed")
    if skipped is not None and results:
        results[0].details["distributed"] = f"skipped: {skipped}"
    for result in results:
        record(result)


if __name__ == "__main__":
    main()
