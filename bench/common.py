"""What every benchmark shares: starting the service as a user would, timing, and recording results.

Benchmarks report ratios of runs interleaved in one sitting (the machines are shared and noisy:
absolute times drift, ratios of interleaved runs hold), and print their ratio on their last line.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
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


def ensure_tiny_model(env: dict[str, str]) -> None:
    """The tiny random-weight SDXL model, built once into the data directory's registry."""
    listed = json.loads(dreamforge(env, "model", "list"))
    if not listed.get("models"):
        dreamforge(env, "model", "create-tiny", "--name", "tiny-sdxl")


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


def record(result: Result) -> Result:
    """Print the result (its ratio on the last line) and add it to bench/results/latest.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "latest.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("benchmarks", {})[result.name] = asdict(result)
    data["machine"] = machine()
    data["smoke"] = SMOKE
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(result.details, indent=None)[:2000])
    print(result.line())
    return result
