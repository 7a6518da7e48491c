"""Test support: a real `dreamforge serve` process and a small SSE reader for the tests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DREAMFORGE = str(Path(sys.executable).with_name("dreamforge"))


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a `dreamforge` process using `data_dir`, never a hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DF_")}
    env.update({"DF_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `dreamforge ARGS` to completion."""
    return subprocess.run(
        [DREAMFORGE, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
    )


@dataclass
class Run:
    """One finished CLI run."""

    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def lines(self) -> list[Any]:
        """stdout as JSON lines (NDJSON)."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    @property
    def error(self) -> dict[str, Any]:
        """stderr as the ErrorResponse the CLI prints for an API error."""
        body: dict[str, Any] = json.loads(self.stderr)
        return body


def df(env: dict[str, str], *args: str) -> Run:
    """Run `dreamforge ARGS` as a user would, to completion."""
    done = run_cli(list(args), env)
    return Run(done.returncode, done.stdout, done.stderr)


@dataclass
class DreamforgeProcess:
    """A `dreamforge` subprocess in its own process group, logging to a file in `data_dir`."""

    data_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    # What runs `dreamforge`: the installed command, or a wrapper (tests/fault_worker.py).
    command: list[str] = field(default_factory=lambda: [DREAMFORGE])

    def _launch(self, args: list[str], ready: Callable[[], bool], timeout: float) -> None:
        """Start `dreamforge ARGS` and wait until `ready()`; fail with the log if it exits or stalls."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"{args[0]}-{time.time_ns()}.log"
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*self.command, *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dreamforge {args[0]} exited early:\n{self.log_text()}")
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"dreamforge {args[0]} did not become ready:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or OOM kill."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL if it lingers."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class ServerProcess(DreamforgeProcess):
    """A `dreamforge serve` subprocess on a loopback port."""

    port: int = field(default_factory=free_port)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"{self.root}/v1"

    def start(self, timeout: float = 60) -> ServerProcess:
        """Start and wait until the API answers."""

        def answers() -> bool:
            try:
                # Open with or without DF_AUTH; uvicorn answers once the app's startup has finished.
                return httpx.get(f"{self.root}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        self._launch(["serve", "--port", str(self.port)], answers, timeout)
        return self

    def restarted(self) -> ServerProcess:
        """A new server on the same data directory and port, started."""
        return ServerProcess(data_dir=self.data_dir, env=self.env, port=self.port).start()


@dataclass
class WorkerProcess(DreamforgeProcess):
    """A `dreamforge worker` (Celery, solo pool) subprocess; `args` are its command-line flags."""

    args: list[str] = field(default_factory=list)

    def start(self, timeout: float = 60) -> WorkerProcess:
        """Start and wait until Celery reports the worker ready to consume."""
        self._launch(["worker", *self.args], lambda: " ready." in self.log_text(), timeout)
        return self


@dataclass
class RedisServer:
    """A private `redis-server` on a loopback port, for tests that take the broker away."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not on PATH")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            cwd=self.data_dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class TcpProxy:
    """A loopback TCP forwarder that a test can cut and restore, to take a server away mid-test.

    Written by hand because it is a few lines of sockets and threads: no library is needed to
    make a port stop answering.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0  # connections forwarded so far, across cuts
        self._listener: socket.socket | None = None

    def start(self) -> TcpProxy:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Stop listening and drop every open connection, as a crashed server would."""
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave it accepting.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


@dataclass
class SseEvent:
    """One parsed Server-Sent Event."""

    id: str | None
    event: str
    data: dict[str, Any]


def iter_sse(response: httpx.Response) -> Iterator[SseEvent | str]:
    """Events of an SSE response; comment lines (keep-alives) are yielded as strings."""
    fields: dict[str, str] = {}
    data_lines: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if data_lines or fields:
                yield SseEvent(
                    fields.get("id"), fields.get("event", "message"), json.loads("\n".join(data_lines))
                )
            fields, data_lines = {}, []
        elif line.startswith(":"):
            yield line
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data_lines.append(value)
            else:
                fields[name] = value


def read_sse(
    client: httpx.Client,
    url: str,
    headers: dict[str, str] | None = None,
    timeout: float = 120,
    stop_after: int | None = None,
) -> list[SseEvent]:
    """Read an SSE stream until it closes (or `stop_after` events); keep-alives are dropped."""
    events: list[SseEvent] = []
    with client.stream("GET", url, headers=headers, timeout=httpx.Timeout(timeout)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for item in iter_sse(response):
            if isinstance(item, SseEvent):
                events.append(item)
                if stop_after is not None and len(events) >= stop_after:
                    break
    return events


def assert_artifacts_downloadable(artifacts: list[dict[str, Any]]) -> None:
    """Each artifact's URL downloads its bytes, with its content type and its recorded sha256."""
    for art in artifacts:
        download = httpx.get(art["url"])
        assert download.status_code == 200, (art["url"], download.status_code)
        assert download.headers["content-type"] == art["content_type"]
        assert hashlib.sha256(download.content).hexdigest() == art["sha256"], art


def wait_until(condition: Callable[[], bool], message: str, timeout: float = 120) -> None:
    """Poll `condition` every 50 ms until it holds; fail with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def wait_for_status(
    client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 120
) -> dict[str, Any]:
    """Poll a job until its status is one of `statuses`; returns its last status document."""
    body: dict[str, Any] = {}

    def reached() -> bool:
        body.update(client.get(f"/jobs/{job_id}").json())
        return body["status"] in statuses

    wait_until(reached, f"job {job_id} did not reach {sorted(statuses)} in {timeout}s", timeout)
    return body
