"""API throughput: `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/progress` and `POST /v1/jobs` at concurrency 32
from a separate load process (bench/load.py), each interleaved with a bare FastAPI endpoint served by the
same uvicorn on this machine (the ceiling). Targets: GET >= 0.5 of the ceiling, POST >= 0.25, no errors.

    python bench/api_throughput.py [--rounds 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from common import ROOT, SMOKE, Result, embedded_service, free_port, median, process, record, run_job

CONCURRENCY = 32
TARGETS = {"get_job": 0.5, "get_progress": 0.5, "create_job": 0.25}
JOB = {"type": "generate", "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 1}


def _load(url: str, seconds: float, method: str = "GET", body: str | None = None) -> dict[str, Any]:
    args = [sys.executable, str(ROOT / "bench" / "load.py"), url, "--concurrency", str(CONCURRENCY)]
    args += ["--seconds", str(seconds), "--method", method]
    if body is not None:
        args += ["--body", body]
    return dict(json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1 if SMOKE else 3)
    parser.add_argument("--seconds", type=float, default=1.0 if SMOKE else 8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="df-bench-") as tmp:
        data_dir = Path(tmp) / "var"
        ceiling_port = free_port()
        ceiling_cmd = [sys.executable, str(ROOT / "bench" / "ceiling_app.py"), str(ceiling_port)]
        ceiling_url = f"http://127.0.0.1:{ceiling_port}/ping"
        # DF_MAX_QUEUED_JOBS=0 lifts the queue cap, so creating thousands of jobs is never a 429. In the
        # embedded topology they also render (1 step, 64x64) on the in-process worker meanwhile: that
        # contention is part of what a user of one box gets.
        with (
            process(ceiling_cmd, {}, ceiling_url, data_dir.parent / "ceiling.log"),
            embedded_service(data_dir, DF_MAX_QUEUED_JOBS="0") as root,
        ):
            # Measured once the job has finished: the first job also loads the pipeline, which would
            # otherwise compete with the first rounds.
            job, _ = run_job(httpx.Client(timeout=60), root, JOB)
            targets = {
                "get_job": ("GET", f"{root}/v1/jobs/{job}", None),
                "get_progress": ("GET", f"{root}/v1/jobs/{job}/progress", None),
                "create_job": ("POST", f"{root}/v1/jobs", json.dumps(JOB)),
            }
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            ceilings: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            # Route by route, so the reads are measured before the created jobs keep the worker busy.
            for name, (method, url, body) in targets.items():
                for _ in range(args.rounds):
                    ceilings[name].append(_load(ceiling_url, args.seconds))
                    runs[name].append(_load(url, args.seconds, method, body))
    for name, target in TARGETS.items():
        ratios = [float(r["rps"]) / float(c["rps"]) for r, c in zip(runs[name], ceilings[name], strict=True)]
        errors = sum(int(r["errors"]) for r in runs[name])
        ratio = median(ratios)
        record(
            Result(
                name=f"api_throughput.{name}",
                ratio=ratio,
                target=f">= {target} of the ceiling, 0 errors",
                passed=ratio >= target and errors == 0,
                unit="requests/s",
                median=median([float(r["rps"]) for r in runs[name]]),
                details={
                    "ceiling_rps": [c["rps"] for c in ceilings[name]],
                    "rps": [r["rps"] for r in runs[name]],
                    "p95_ms": [r["p95_ms"] for r in runs[name]],
                    "errors": errors,
                    "ratios": [round(r, 3) for r in ratios],
                },
            )
        )


if __name__ == "__main__":
    main()
