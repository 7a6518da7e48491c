"""API throughput: `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/progress` and `POST /v1/jobs` at concurrency 32
from a separate load process (bench/load.py), each interleaved with a bare FastAPI endpoint served by the
same uvicorn on this machine (the ceiling). Targets: GET >= 0.5 of the ceiling, POST >= 0.25, no errors,
in both topologies.

The floors (informational, `api_throughput.floor.*`), each against the ceiling: the ceiling app's
`POST /floor/validate` (the body validated by the API's request model, nothing else), `POST
/floor/publish` (that plus one Celery message, as each accepted distributed job sends), `POST
/floor/insert` (validated, then stored as one Postgres row in one durable commit) and `GET
/floor/select/{id}` (one Postgres row read by its key, on the API's kind of pool). They show how much
of a target is left once a request has done the least its route must (all but `validate` need Redis
and Postgres; see bench/ceiling_app.py).

Embedded: `dreamforge serve`; the reads poll a finished job, and the created jobs render (1 step, 64x64)
on the in-process worker meanwhile: that contention is part of what a user of one box gets. Distributed:
the API on Postgres, Redis and S3 with no worker, so what is measured is the API process alone; the
reads poll a queued job and created jobs wait in the queue (deleted afterwards).

    python bench/api_throughput.py [--rounds 3] [--seconds 8] [--only embedded|distributed]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from common import (
    REDIS_URL,
    ROOT,
    SMOKE,
    Result,
    distributed_service,
    embedded_service,
    free_port,
    median,
    process,
    record,
    run_job,
    services_reachable,
)

CONCURRENCY = 32
TARGETS = {"get_job": 0.5, "get_progress": 0.5, "create_job": 0.25}
JOB = {"type": "generate", "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 1}
# Lifts the queue cap, so creating thousands of jobs is never a 429.
UNCAPPED = {"DF_MAX_QUEUED_JOBS": "0"}


def _load(url: str, seconds: float, method: str = "GET", body: str | None = None) -> dict[str, Any]:
    args = [sys.executable, str(ROOT / "bench" / "load.py"), url, "--concurrency", str(CONCURRENCY)]
    args += ["--seconds", str(seconds), "--method", method]
    if body is not None:
        args += ["--body", body]
    return dict(json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout))


@contextmanager
def _service(topology: str, data_dir: Path) -> Iterator[tuple[str, str]]:
    """The topology's API root and the id of the job the reads poll."""
    if topology == "embedded":
        with embedded_service(data_dir, **UNCAPPED) as root:
            # Polled once finished: the first job also loads the pipeline, which would otherwise
            # compete with the first rounds.
            with httpx.Client(timeout=60) as client:
                job, _ = run_job(client, root, JOB)
            yield root, job
    else:
        with distributed_service(data_dir, workers=0, **UNCAPPED) as root:
            job = httpx.post(f"{root}/v1/jobs", json=JOB, timeout=30).raise_for_status().json()["job"]["id"]
            yield root, job


def _measure(topology: str, root: str, job: str, ceiling_url: str, rounds: int, seconds: float) -> None:
    targets = {
        "get_job": ("GET", f"{root}/v1/jobs/{job}", None),
        "get_progress": ("GET", f"{root}/v1/jobs/{job}/progress", None),
        "create_job": ("POST", f"{root}/v1/jobs", json.dumps(JOB)),
    }
    # Route by route, so the reads are measured before the created jobs keep the worker busy.
    measured = {
        name: _interleaved(ceiling_url, url, rounds, seconds, method, body)
        for name, (method, url, body) in targets.items()
    }
    for name, target in TARGETS.items():
        _record(
            f"api_throughput.{topology}.{name}",
            f">= {target} of the ceiling, 0 errors",
            *measured[name],
            target,
        )


def _interleaved(
    ceiling_url: str, url: str, rounds: int, seconds: float, method: str = "GET", body: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`rounds` loads of the ceiling and of `url`, alternating: (the ceiling's, `url`'s)."""
    ceilings, runs = [], []
    for _ in range(rounds):
        ceilings.append(_load(ceiling_url, seconds))
        runs.append(_load(url, seconds, method, body))
    return ceilings, runs


def _record(
    name: str,
    target: str,
    ceilings: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    minimum: float | None,
    **extra: Any,
) -> None:
    """Record runs against their ceilings: passed with no errors and, given a `minimum`, that ratio."""
    ratios = [float(r["rps"]) / float(c["rps"]) for r, c in zip(runs, ceilings, strict=True)]
    errors = sum(int(r["errors"]) for r in runs)
    ratio = median(ratios)
    record(
        Result(
            name=name,
            ratio=ratio,
            target=target,
            passed=errors == 0 and (minimum is None or ratio >= minimum),
            unit="requests/s",
            median=median([float(r["rps"]) for r in runs]),
            p95=median([float(r["p95_ms"]) for r in runs]),
            details={
                **extra,
                "ceiling_rps": [c["rps"] for c in ceilings],
                "rps": [r["rps"] for r in runs],
                "p95_ms": [r["p95_ms"] for r in runs],
                "errors": errors,
                "ratios": [round(r, 3) for r in ratios],
            },
        )
    )


# The row the select floor reads: the ceiling app makes it (FLOOR_ROW).
FLOOR_ROW = "0b7e6f5c-2f7a-4a0e-8d7e-3c1f2a9b6d44"
# The floors: (path, method, what it does, the target it bounds).
FLOORS = {
    "validate": (
        "floor/validate",
        "POST",
        "the body validated by the API's request model, nothing stored or sent",
        "create_job",
    ),
    "publish": (
        "floor/publish",
        "POST",
        "validated, then one Celery message published (no database)",
        "create_job",
    ),
    "insert": (
        "floor/insert",
        "POST",
        "validated, then inserted as one Postgres row in one durable commit (nothing sent)",
        "create_job",
    ),
    "select": (
        f"floor/select/{FLOOR_ROW}",
        "GET",
        "one small Postgres row read by its key on the API's kind of async pool",
        "get_job",
    ),
}


def _floors(ceiling_url: str, rounds: int, seconds: float, services: bool) -> None:
    """The floors against the ceiling, interleaved (api_throughput.floor.*, informational): what a
    route could reach at most, before any of our own work. Without Redis and Postgres, only `validate`."""
    root = ceiling_url.removesuffix("/ping")
    for name, (path, method, what, bounds) in FLOORS.items():
        if name != "validate" and not services:
            continue
        body = json.dumps(JOB) if method == "POST" else None
        # Fewer rounds than the routes': these only bound the targets, and make bench has 10 minutes.
        measured = _interleaved(ceiling_url, f"{root}/{path}", min(rounds, 2), seconds, method, body)
        route = "POST /v1/jobs" if bounds == "create_job" else "a polled GET in the distributed topology"
        target = f"informational: the most {route} could reach ({TARGETS[bounds]} wanted)"
        _record(f"api_throughput.floor.{name}", target, *measured, None, what=what)


def _delete_queue(queue: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.delete(queue)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1 if SMOKE else 3)
    parser.add_argument("--seconds", type=float, default=0.3 if SMOKE else 4.0)
    parser.add_argument("--only", choices=["embedded", "distributed"])
    args = parser.parse_args()
    topologies = [args.only] if args.only else ["embedded", "distributed"]
    with tempfile.TemporaryDirectory(prefix="df-bench-") as tmp:
        ceiling_port = free_port()
        ceiling_cmd = [sys.executable, str(ROOT / "bench" / "ceiling_app.py"), str(ceiling_port)]
        ceiling_url = f"http://127.0.0.1:{ceiling_port}/ping"
        why_not = services_reachable()
        floor_queue = f"bench-floor-{uuid.uuid4().hex[:8]}"
        with contextlib.ExitStack() as stack:
            floor_env = {}
            if why_not is None:
                sys.path.insert(0, str(ROOT / "tests"))
                from conftest import pg_database

                db_url = stack.enter_context(pg_database()).replace("postgresql+psycopg://", "postgresql://")
                floor_env = {
                    "FLOOR_REDIS_URL": REDIS_URL,
                    "FLOOR_QUEUE": floor_queue,
                    "FLOOR_DB_URL": db_url,
                    "FLOOR_ROW": FLOOR_ROW,
                }
                stack.callback(_delete_queue, floor_queue)
            stack.enter_context(process(ceiling_cmd, floor_env, ceiling_url, Path(tmp) / "ceiling.log"))
            _floors(ceiling_url, args.rounds, args.seconds, services=why_not is None)
            for topology in topologies:
                if topology == "distributed" and (why := services_reachable()) is not None:
                    print(f"distributed topology skipped: {why}")
                    continue
                with _service(topology, Path(tmp) / topology) as (root, job):
                    _measure(topology, root, job, ceiling_url, args.rounds, args.seconds)


if __name__ == "__main__":
    main()
