"""SSE fan-out: 500, then 1,000 concurrent `GET /v1/jobs/{id}/progress/stream` clients on one running job.

Targets, per crowd: every client receives every event of the job, in order, none lost or repeated, no
connection refused or broken; the p95 over the job's events of the spread between the first and the
last client receiving the same event is <= 50 ms. Reported beside it: the server's memory per idle stream.

How:

- One `dreamforge serve` (embedded: SQLite, the in-process worker, the tiny random-weight model) per
  crowd, fresh, so the memory of one crowd's streams is not reused by the next (a smoke run has one crowd).
- A long "blocker" job keeps the single worker busy, so the measured job stays queued while the crowd
  connects; every client gets the queued job's history and waits. The server's RSS (`/proc/PID/status`)
  is read before the crowd connects and once every client has the history: (after - before) / clients
  is the memory per idle stream. Then the blocker is canceled, the measured job runs, and each of its
  events reaches every client live; the stream ends after the `done` event.
- The crowd comes from separate client processes (`--client`), on raw asyncio protocols (uvloop when
  present) that decode the chunked body and the SSE frames themselves, as bench/load.py does: an HTTP
  client library's per-read cost would be counted as the server's spread. Each client stamps an event
  with `time.perf_counter()` when its bytes arrive; on Linux that is CLOCK_MONOTONIC, one clock for
  every process, so stamps from different client processes compare.
- After the job ends, one more stream replays its events from the database: that is the reference
  sequence every client's event ids are checked against (lost, repeated, out of order, unexpected).
  Only events first received after the blocker's cancel count for the spread: the history a client
  got when it connected is spread over the connection times, not over the fan-out.

The floor (`sse_fanout.floor.N`, informational): the same client processes on the ceiling app's bare
sse-starlette stream (bench/ceiling_app.py) on the same uvicorn, no database and no render, sent
FLOOR_EVENTS frames of a job event's size at the job's pace, then `done`. Its spread is the least this
stack's fan-out to N streams costs on this machine, clients included: what of the target is ours.

The spread is an upper bound on the server's: a client process reading its share of the sockets one
after another adds its own delay, on the same 2 cores as the server. Several client processes (4, each
holding a quarter of the crowd) read in parallel, so that delay is a fraction of one process reading all.
In our runs an event reached each client process in its own window, one after the other, in the order
the server wakes its streams: the spread measured is the server writing stream after stream.

    python bench/sse_fanout.py [--clients 500 1000] [--steps 60]

(`--client` is the client process's own mode, started by the benchmark.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
from common import (
    BIN,
    ROOT,
    SMOKE,
    Result,
    ensure_tiny_model,
    free_port,
    median,
    pct,
    process,
    record,
    service_env,
)

TARGET_MS = 50.0
CLIENT_PROCESSES = 2 if SMOKE else 4
# The measured job: at 64x64 the tiny model steps in tens of ms on one core, and progress events are
# written at most every 0.1 s, so this gives some 40-60 events over a few seconds.
MEASURED = {"type": "generate", "prompt": "a lighthouse in a gale", "width": 64, "height": 64}
# Minutes of rendering, so it is still running when the crowd has connected however slowly; it is
# canceled then.
BLOCKER = {**MEASURED, "prompt": "a blocker", "steps": 200, "count": 20}
# One torch thread, as a job on a GPU takes one CPU thread to feed it: a CPU render's spinning thread
# pool on 2 cores would measure torch against the event loop, not the fan-out (tests/e2e does the same).
SERVER_ENV = {"OMP_NUM_THREADS": "1"}
# A job on a slow machine is canceled after this long: its stream still ends with `done`.
JOB_LIMIT_SECONDS = 60.0
# Concurrent throwaway streams before the "before" memory reading: the server's thread pool and
# database connections grow on the first burst of stream requests, once, and are not a stream's cost.
WARMUP_STREAMS = 64
# The floor's live frames and their pace: about the measured job's (some 15 events, 0.1 s apart).
FLOOR_EVENTS = 15
FLOOR_PACE_SECONDS = 0.1
# A crowd not connected in this long is measured as it is: its missing streams count as errors.
CONNECT_LIMIT_SECONDS = 60.0


# --- The client process ---------------------------------------------------------------------------


class _Stream(asyncio.Protocol):
    """One SSE client: sends the request, decodes the (chunked) body and stamps each event on arrival."""

    def __init__(self, request: bytes, on_first: asyncio.Event, counter: list[int], goal: int) -> None:
        self.request = request
        self.events: list[tuple[int, float]] = []
        self.error: str | None = None
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._on_first = on_first
        self._counter = counter
        self._goal = goal
        self._first_seen = False
        self._transport: asyncio.WriteTransport | None = None
        self._raw = b""
        self._headers_done = False
        self._chunked = False
        self._sse = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but write and close alike.
        self._transport = cast(asyncio.WriteTransport, transport)
        self._transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.finished.done():
            return
        self._raw += data
        try:
            self._parse(now)
        except Exception as exc:
            self.finish(f"unparsable answer: {exc!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish(f"closed before `done`: {exc!r}")

    def _first(self) -> None:
        # Counted once per stream, received or failed: the crowd is "connected" when all are one or other.
        if not self._first_seen:
            self._first_seen = True
            self._counter[0] += 1
            if self._counter[0] >= self._goal:
                self._on_first.set()

    def finish(self, error: str | None) -> None:
        if self.finished.done():
            return
        self.error = error
        self._first()
        self.finished.set_result(None)
        if self._transport is not None:
            self._transport.close()

    def _parse(self, now: float) -> None:
        if not self._headers_done:
            end = self._raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self._raw = self._raw[:end].decode("latin-1"), self._raw[end + 4 :]
            lines = head.split("\r\n")
            status = int(lines[0].split()[1])
            if status != 200:
                self.finish(f"HTTP {status}")
                return
            self._headers_done = True
            self._chunked = any(
                line.lower().startswith("transfer-encoding:") and "chunked" in line.lower() for line in lines
            )
        if not self._chunked:
            self._sse_received(self._raw, now)
            self._raw = b""
            return
        while True:
            line_end = self._raw.find(b"\r\n")
            if line_end < 0:
                return
            size = int(self._raw[:line_end].split(b";")[0], 16)
            if size == 0:
                self.finish("body ended before `done`")
                return
            start = line_end + 2
            if len(self._raw) < start + size + 2:
                return
            payload = self._raw[start : start + size]
            self._raw = self._raw[start + size + 2 :]
            self._sse_received(payload, now)
            if self.finished.done():
                return

    def _sse_received(self, payload: bytes, now: float) -> None:
        self._sse += payload
        # sse-starlette ends lines with CRLF; a CR at the very end may still have its LF coming.
        keep = b"\r" if self._sse.endswith(b"\r") else b""
        text = (self._sse[:-1] if keep else self._sse).replace(b"\r\n", b"\n")
        *frames, rest = text.split(b"\n\n")
        self._sse = rest + keep
        for frame in frames:
            event_id: int | None = None
            kind = ""
            for line in frame.split(b"\n"):
                if not line or line.startswith(b":"):
                    continue  # keep-alive comments carry no event
                name, _, value = line.partition(b":")
                value = value.removeprefix(b" ")
                if name == b"id":
                    event_id = int(value)
                elif name == b"event":
                    kind = value.decode()
            if event_id is None:
                continue
            self.events.append((event_id, now))
            self._first()
            if kind == "done":
                # The server ends the stream after `done`; closing here spares waiting for its last chunk.
                self.finish(None)
                return


async def _crowd(url: str, n: int, limit: float) -> None:
    """`n` streams of `url`: prints `ready` once each has an event or failed (or CONNECT_LIMIT_SECONDS
    have passed), then, when all have ended or `limit` seconds have passed, one JSON line."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    on_first = asyncio.Event()
    counter = [0]
    streams = [_Stream(request, on_first, counter, n) for _ in range(n)]

    async def connect(stream: _Stream) -> None:
        try:
            await loop.create_connection(lambda: stream, host, port)
        except OSError as exc:
            stream.finish(f"connect: {exc!r}")

    deadline = time.perf_counter() + limit
    await asyncio.gather(*(connect(s) for s in streams))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(on_first.wait(), CONNECT_LIMIT_SECONDS)
    print("ready", flush=True)
    pending = [s.finished for s in streams if not s.finished.done()]
    if pending:
        await asyncio.wait(pending, timeout=max(0.0, deadline - time.perf_counter()))
    for s in streams:
        s.finish("timed out")
    out = [{"events": s.events, "error": s.error} for s in streams]
    print(json.dumps(out, separators=(",", ":")), flush=True)


def client_main(url: str, n: int, limit: float) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_crowd(url, n, limit))


# --- The benchmark ----------------------------------------------------------------------------------


@dataclass
class Crowd:
    """What one crowd of clients saw."""

    clients: int
    streams: list[dict[str, Any]] = field(default_factory=list)
    reference: list[int] = field(default_factory=list)
    go: float = 0.0
    memory_kib_per_stream: float = 0.0
    connect_seconds: float = 0.0
    job_status: str = ""
    server_log: dict[str, Any] = field(default_factory=dict)
    # The ceiling app's bare stream rather than a job's (measure_floor).
    floor: bool = False


def _say(message: str) -> None:
    # Progress on stderr: stdout's last line is the result's.
    print(f"[sse_fanout {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _raise_fd_limit() -> int:
    # The server and the client processes inherit it: a thousand streams are a thousand sockets each side.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _rss_kib(pid: int, samples: int = 5) -> float:
    """The process's resident memory in KiB, the median of a few readings (the blocker renders meanwhile)."""
    readings = []
    for _ in range(samples):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                readings.append(float(line.split()[1]))
        time.sleep(0.1)
    return median(readings)


def _create(root: str, body: dict[str, Any]) -> str:
    answer = httpx.post(f"{root}/v1/jobs", json=body, timeout=30)
    answer.raise_for_status()
    return str(answer.json()["job"]["id"])


def _wait_rendering(root: str, job: str, limit: float = 120.0) -> None:
    """Until `job` has made progress: the model is loaded and the worker busy with it."""
    deadline = time.monotonic() + limit
    while httpx.get(f"{root}/v1/jobs/{job}/progress", timeout=30).json()["progress"] <= 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job} did not start rendering in {limit} s")
        time.sleep(0.2)


def _wait_finished(root: str, job: str, limit: float) -> str:
    """The job's final status; canceled once `limit` seconds have passed (its stream then ends too)."""
    deadline = time.monotonic() + limit
    while (status := str(httpx.get(f"{root}/v1/jobs/{job}", timeout=30).json()["status"])) in (
        "queued",
        "running",
    ):
        if time.monotonic() > deadline:
            httpx.post(f"{root}/v1/jobs/{job}/cancel", timeout=30)
            deadline = float("inf")
        time.sleep(0.2)
    return status


def _replay(root: str, job: str) -> list[int]:
    """The job's event ids as a late subscriber gets them, from the database: the reference sequence."""
    ids = []
    with httpx.stream("GET", f"{root}/v1/jobs/{job}/progress/stream", timeout=60) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines():
            if line.startswith("id:"):
                ids.append(int(line[3:]))
    return ids


async def _warm_up(root: str, job: str, n: int) -> None:
    """`n` streams of `job` opened at once, each closed at its first event."""
    parts = urlsplit(root)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"GET /v1/jobs/{job}/progress/stream HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
            )
            while (line := await reader.readline()) and not line.startswith(b"id:"):
                pass
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), 60)


@contextmanager
def _clients(url: str, n: int, limit: float) -> Iterator[list[subprocess.Popen[str]]]:
    """The crowd's client processes, `n` streams between them; killed if still there at the end."""
    shares = [n // CLIENT_PROCESSES + (i < n % CLIENT_PROCESSES) for i in range(CLIENT_PROCESSES)]
    procs: list[subprocess.Popen[str]] = []
    try:
        for share in shares:
            command = [sys.executable, __file__, "--client", url, str(share), str(limit)]
            procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _await_ready(procs: list[subprocess.Popen[str]]) -> None:
    """Until every client process says its streams are connected (each has its first event)."""
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("a client process ended before its streams connected")


def _collect(procs: list[subprocess.Popen[str]], limit: float) -> list[dict[str, Any]]:
    """What every stream of the client processes received, once they have ended."""
    streams: list[dict[str, Any]] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=limit)
        streams += json.loads(out)
    return streams


def _log_problems(log: Path, since: int) -> dict[str, Any]:
    """Server log lines past byte `since` that tell of trouble: errors, warnings, refused or failed calls."""
    text = log.read_bytes()[since:].decode(errors="replace")
    problems = [
        line
        for line in text.splitlines()
        if any(mark in line for mark in ("ERROR", "WARNING", "Traceback", '" 429', '" 5'))
    ]
    return {"lines": len(problems), "first": problems[:3]}


def measure(root: str, pid: int, n: int, steps: int, log: Path) -> Crowd:
    """One crowd of `n` clients on one job of `steps` steps."""
    crowd = Crowd(clients=n)
    log_start = log.stat().st_size
    blocker = _create(root, BLOCKER)
    _wait_rendering(root, blocker)
    _say(f"{n} clients: the blocker renders; connecting the crowd")
    job = _create(root, {**MEASURED, "steps": steps})
    asyncio.run(_warm_up(root, blocker, min(WARMUP_STREAMS, n)))
    time.sleep(1.0)
    before = _rss_kib(pid)
    started = time.perf_counter()
    limit = CONNECT_LIMIT_SECONDS + JOB_LIMIT_SECONDS + 30.0
    with _clients(f"{root}/v1/jobs/{job}/progress/stream", n, limit) as procs:
        _await_ready(procs)
        crowd.connect_seconds = time.perf_counter() - started
        status = httpx.get(f"{root}/v1/jobs/{job}", timeout=30).json()["status"]
        if status != "queued":
            raise RuntimeError(f"the measured job is {status} before the crowd connected; longer blocker?")
        crowd.memory_kib_per_stream = (_rss_kib(pid) - before) / n
        _say(f"{n} clients connected in {crowd.connect_seconds:.1f} s; running the job")
        crowd.go = time.perf_counter()
        httpx.post(f"{root}/v1/jobs/{blocker}/cancel", timeout=30).raise_for_status()
        crowd.job_status = _wait_finished(root, job, JOB_LIMIT_SECONDS)
        crowd.streams = _collect(procs, limit)
    crowd.reference = _replay(root, job)
    crowd.server_log = _log_problems(log, log_start)
    _say(f"{n} clients: the job is {crowd.job_status} after {time.perf_counter() - crowd.go:.1f} s")
    return crowd


def measure_floor(n: int, data_dir: Path) -> Crowd:
    """`n` clients on the ceiling app's bare stream, sent FLOOR_EVENTS frames and `done`."""
    crowd = Crowd(clients=n, floor=True)
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    command = [sys.executable, str(ROOT / "bench" / "ceiling_app.py"), str(port)]
    log = data_dir / "floor.log"
    with process(command, dict(os.environ), f"{root}/ping", log):
        started = time.perf_counter()
        limit = CONNECT_LIMIT_SECONDS + JOB_LIMIT_SECONDS
        with _clients(f"{root}/floor/stream", n, limit) as procs:
            _await_ready(procs)
            crowd.connect_seconds = time.perf_counter() - started
            _say(f"floor, {n} clients: connected in {crowd.connect_seconds:.1f} s; sending frames")
            time.sleep(1.0)
            crowd.go = time.perf_counter()
            with httpx.Client(timeout=30) as client:
                for kind in ["progress"] * FLOOR_EVENTS + ["done"]:
                    time.sleep(FLOOR_PACE_SECONDS)
                    last = int(client.post(f"{root}/floor/fire", params={"kind": kind}).json()["id"])
            crowd.streams = _collect(procs, limit)
        crowd.reference = list(range(1, last + 1))
        crowd.server_log = _log_problems(log, 0)
    return crowd


def summarize(crowd: Crowd) -> Result:
    """The crowd's spread percentiles and delivery errors, as a recorded result."""
    reference = crowd.reference
    expected = set(reference)
    lost = repeated = out_of_order = unexpected = 0
    errors: dict[str, int] = {}
    arrivals: dict[int, list[float]] = {event_id: [] for event_id in reference}
    for stream in crowd.streams:
        ids = [int(event_id) for event_id, _ in stream["events"]]
        seen = set(ids)
        lost += len(expected - seen)
        repeated += len(ids) - len(seen)
        unexpected += len(seen - expected)
        out_of_order += sum(1 for a, b in itertools.pairwise(ids) if b <= a)
        if stream["error"] is not None:
            key = str(stream["error"])[:80]
            errors[key] = errors.get(key, 0) + 1
        for event_id, stamp in stream["events"]:
            if event_id in arrivals:
                arrivals[event_id].append(float(stamp))
    live = {i: times for i, times in arrivals.items() if times and min(times) > crowd.go}
    spreads = [(max(times) - min(times)) * 1000 for times in live.values()]
    p50 = median(spreads) if spreads else float("nan")
    p95 = pct(spreads, 0.95) if spreads else float("nan")
    failures = lost + repeated + out_of_order + unexpected + sum(errors.values())
    target = f"p95 first-to-last spread <= {TARGET_MS:.0f} ms, 0 lost/repeated"
    if crowd.floor:
        target = f"informational: a bare sse-starlette stream's spread, the least ours could be ({target})"
    details: dict[str, Any] = {
        "clients": crowd.clients,
        "client_processes": CLIENT_PROCESSES,
        "events": len(reference),
        "live_events": len(live),
        "spread_max_ms": round(max(spreads), 2) if spreads else None,
        "lost": lost,
        "repeated": repeated,
        "out_of_order": out_of_order,
        "unexpected": unexpected,
        "errors": errors,
        "memory_kib_per_idle_stream": round(crowd.memory_kib_per_stream, 1),
        "connect_seconds": round(crowd.connect_seconds, 2),
        "job_status": crowd.job_status,
        "server_log_problems": crowd.server_log,
    }
    if crowd.floor:
        # No job and no idle streams measured: the floor's memory would be the bare app's.
        del details["memory_kib_per_idle_stream"], details["job_status"]
    return Result(
        name=f"sse_fanout.floor.{crowd.clients}" if crowd.floor else f"sse_fanout.{crowd.clients}",
        ratio=p95 / TARGET_MS,
        target=target,
        # The floor bounds the target; it passes when every frame reached every client in order.
        passed=bool(spreads) and failures == 0 and (crowd.floor or p95 <= TARGET_MS),
        unit="ms",
        median=round(p50, 2),
        p95=round(p95, 2),
        details=details,
    )


@contextmanager
def _server(data_dir: Path) -> Iterator[tuple[str, int, Path]]:
    """`dreamforge serve` as `embedded_service` starts it, with its pid for the memory readings."""
    env = service_env(data_dir, **SERVER_ENV)
    ensure_tiny_model(env)
    port = free_port()
    command = [str(BIN / "dreamforge"), "serve", "--port", str(port)]
    ready = f"http://127.0.0.1:{port}/readyz"
    log = data_dir / f"serve-{port}.log"
    with process(command, env, ready, log) as proc:
        yield f"http://127.0.0.1:{port}", proc.pid, log


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[40] if SMOKE else [500, 1000])
    parser.add_argument("--steps", type=int, default=8 if SMOKE else 60)
    parser.add_argument("--client", nargs=3, metavar=("URL", "N", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    fd_limit = _raise_fd_limit()
    if args.client:
        url, n, limit = args.client
        client_main(url, int(n), float(limit))
        return
    if max(args.clients) + WARMUP_STREAMS + 1 > fd_limit:
        print(f"warning: open-file limit {fd_limit} is below the crowd's sockets", file=sys.stderr)
    crowds: list[Crowd] = []
    with tempfile.TemporaryDirectory(prefix="df-bench-sse-") as tmp:
        data_dir = Path(tmp) / "var"
        for n in args.clients:
            with _server(data_dir) as (root, pid, log):
                crowds.append(measure(root, pid, n, args.steps, log))
        for n in args.clients:
            crowds.append(measure_floor(n, data_dir))
    for crowd in crowds:
        record(summarize(crowd))


if __name__ == "__main__":
    main()
