"""What every benchmark shares: starting the service as a user would, timing, and recording results.

Benchmarks report ratios of runs interleaved in one sitting (the machines are shared and noisy:
absolute times drift, ratios of interleaved runs hold), and print their ratio on their last line.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
# The Celery queues a distributed stack gets its own copies of (by the DF_*QUEUE setting's infix).
QUEUES = {"": "gpu.default", "WEBHOOK_": "webhooks", "REMOTE_": "remote.default"}
# BENCH_SMOKE=1: tiny counts, to check that the scripts still work (CI), not to measure.
SMOKE = os.environ.get("BENCH_SMOKE") == "1"


@dataclass
class Result:
    """One benchmark's outcome, as `bench/results/latest.json` and docs/benchmarks.md show it."""

    name: str
    ratio: float
    target: str
    passed: bool
    unit: str = ""
    median: float | None = None
    p95: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return f"{self.name}: ratio {self.ratio:.3f} (target {self.target}) {verdict}"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: Sequence[float], q: float) -> float:
    """The `q` quantile (0-1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def machine() -> dict[str, Any]:
    """The machine and versions a result was measured with."""
    import fastapi
    import uvicorn

    from dreamforge import __version__

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "dreamforge": __version__,
        "fastapi": fastapi.__version__,
        "uvicorn": uvicorn.__version__,
    }


def service_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a `dreamforge` process of the embedded topology in `data_dir`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DF_")}
    env.update({"DF_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "DF_SIGNING_SECRET": "bench-secret"})
    env.update(extra)
    return env


def dreamforge(env: dict[str, str], *args: str) -> str:
    """Run a `dreamforge` command to completion; its stdout."""
    done = subprocess.run(
        [str(BIN / "dreamforge"), *args], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def tiny_model_dir() -> Path:
    """The tiny random-weight SDXL model's folder, built once for every benchmark and run (building it
    takes half a minute here, most of it importing torch and diffusers)."""
    folder = RESULTS / "tiny-sdxl"
    if not (folder / "model_index.json").exists():
        code = (
            "import sys; from pathlib import Path; from dreamforge.registry.tiny import build_tiny_pipeline; "
        )
        code += "build_tiny_pipeline(Path(sys.argv[1]))"
        subprocess.run([sys.executable, "-c", code, str(folder)], check=True)
    return folder


def ensure_tiny_model(env: dict[str, str]) -> None:
    """The tiny model registered in the registry of `env`'s data directory (or DF_DB_URL), enabled."""
    from dreamforge.db.migrate import upgrade_to_head
    from dreamforge.db.session import create_db_engine, make_session_factory, transaction
    from dreamforge.registry import repository as models_repo
    from dreamforge.registry.install import register_tiny_model

    url = env.get("DF_DB_URL") or f"sqlite:///{Path(env['DF_DATA_DIR']) / 'dreamforge.db'}"
    Path(env["DF_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    upgrade_to_head(url)
    engine = create_db_engine(url)
    try:
        with transaction(make_session_factory(engine)) as session:
            if models_repo.get_model_by_name(session, "tiny-sdxl") is None:
                register_tiny_model(session, "tiny-sdxl", tiny_model_dir())
    finally:
        engine.dispose()


@contextmanager
def process(
    command: list[str], env: dict[str, str], ready_url: str, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A service process, started and waited for until `ready_url` answers 200; stopped after."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{command[0]} exited early; see {log}")
            try:
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command} did not become ready; see {log}")
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def embedded_service(data_dir: Path, **extra: str) -> Iterator[str]:
    """`dreamforge serve` with the tiny model; yields its root URL."""
    env = service_env(data_dir, **extra)
    ensure_tiny_model(env)
    port = free_port()
    with process(
        [str(BIN / "dreamforge"), "serve", "--port", str(port)],
        env,
        f"http://127.0.0.1:{port}/readyz",
        data_dir / "serve.log",
    ):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def _latest() -> Iterator[dict[str, Any]]:
    """bench/results/latest.json to change in place, held against other scripts (a smoke run runs
    them at once) until the block ends; written back then."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "latest.json"
    with (RESULTS / ".latest.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        yield data
        path.write_text(json.dumps(data, indent=2) + "\n")


def record(result: Result) -> Result:
    """Print the result (its ratio on the last line) and add it to bench/results/latest.json."""
    with _latest() as data:
        data.setdefault("benchmarks", {})[result.name] = asdict(result)
        data["machine"] = machine()
        data["smoke"] = SMOKE
    print(json.dumps(result.details, indent=None)[:2000])
    print(result.line())
    return result


def run_job(client: httpx.Client, root: str, body: dict[str, Any], poll: float = 0.02) -> tuple[str, float]:
    """POST a job and poll `GET /v1/jobs/{id}` every `poll` seconds until it succeeds: its id and the
    seconds from the POST to the answer that said `succeeded`. A job that fails or is canceled raises."""
    started = time.perf_counter()
    job_id = str(client.post(f"{root}/v1/jobs", json=body).raise_for_status().json()["job"]["id"])
    while True:
        job = client.get(f"{root}/v1/jobs/{job_id}").raise_for_status().json()
        if job["status"] == "succeeded":
            return job_id, time.perf_counter() - started
        if job["status"] in ("failed", "canceled"):
            raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
        time.sleep(poll)


def drop_result(name: str) -> None:
    """Remove `name` from bench/results/latest.json (a part that did not run leaves no stale result)."""
    with _latest() as data:
        data.get("benchmarks", {}).pop(name, None)


REDIS_URL = os.environ.get("DF_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def services_reachable() -> str | None:
    """Why the distributed topology cannot run here, or None when Postgres and Redis answer."""
    sys.path.insert(0, str(ROOT / "tests"))
    import psycopg
    import redis
    from conftest import PG_ADMIN_URL

    try:
        admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
        psycopg.connect(admin, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL unreachable on loopback ({exc})"
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"Redis unreachable on loopback ({exc})"
    finally:
        client.close()
    return None


@contextmanager
def distributed_service(data_dir: Path, *, workers: int = 1, **extra: str) -> Iterator[str]:
    """API + `workers` Celery workers on a fresh Postgres database, Redis and moto's S3, with the tiny
    model; yields the API's root URL. Built from the tests' parts, with production leases and sweeps.

    With no worker, jobs wait in the queue: what the API alone serves. The queues are deleted after.
    """
    sys.path.insert(0, str(ROOT / "tests"))
    import redis
    from conftest import pg_database, register_tiny
    from s3_server import MotoS3
    from support import ServerProcess, WorkerProcess, cli_env

    tag = uuid.uuid4().hex[:8]
    queues = {f"DF_{kind}QUEUE": f"{name}.bench-{tag}" for kind, name in QUEUES.items()}
    # moto's server runs in this process; its request log would bury the results.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    s3 = MotoS3().start()
    try:
        with pg_database() as db_url:
            register_tiny(db_url, tiny_model_dir())
            env = cli_env(
                data_dir,
                DF_DB_URL=db_url,
                DF_REDIS_URL=REDIS_URL,
                DF_SIGNING_SECRET="bench-secret",
                DF_METRICS_PORT="0",
                **queues,
                **extra,
                **s3.env(f"df-bench-{tag}"),
            )
            data_dir.mkdir(parents=True, exist_ok=True)
            api = ServerProcess(data_dir=data_dir, env=env).start()
            started = [WorkerProcess(data_dir=data_dir, env=env) for _ in range(workers)]
            try:
                for worker in started:
                    worker.start()
                yield api.root
            finally:
                for worker in started:
                    worker.stop()
                api.stop()
                client = redis.Redis.from_url(REDIS_URL)
                client.delete(*queues.values())
                client.close()
    finally:
        s3.stop()
