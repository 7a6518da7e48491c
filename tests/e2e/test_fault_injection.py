"""Bounded fault injection on the distributed topology, with a summary table of what each fault cost.

One scenario per fault, on a distributed stack (`dreamforge serve` and two `dreamforge worker`
processes on Postgres, a private Redis, and moto's S3 behind a proxy): jobs are accepted, the fault
is injected while they run, and then the service's promises are checked. Every accepted job ends
`succeeded`; every item has exactly one artifact (one row, one object) whose URL downloads bytes
matching its sha256; and every 5xx answer the scenario's clients saw carries an `ErrorResponse`
body. The module prints one row per fault (jobs accepted, lost, duplicated artifacts, 5xx answers,
seconds from the fault until every job was terminal) at its end, and writes the table as markdown
under pytest's temporary directory.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import PG_ADMIN_URL, Stack, distributed_stack
from s3_server import MotoS3
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from support import (
    RedisServer,
    SseEvent,
    TcpProxy,
    assert_artifacts_downloadable,
    iter_sse,
    read_sse,
    wait_until,
)

from dreamforge.db.session import create_db_engine, make_session_factory
from dreamforge.db.tables import Artifact, Job

JOB: dict[str, Any] = {"type": "generate", "prompt": "a lighthouse in a gale", "width": 64, "height": 64}
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
# Bound on a scenario's recovery: a stuck job fails the test in this many seconds, not at the timeout.
RECOVERY_LIMIT_SECONDS = 60.0
# One torch thread per process: on a small CI machine two workers' thread pools would otherwise spin
# against each other (and against the API), making each step many times slower.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


# --- What the clients saw ---------------------------------------------------------------------------


@dataclass
class Answers:
    """Every HTTP answer the scenario's API clients got: (method, path, status, body of a 5xx)."""

    seen: list[tuple[str, str, int, bytes]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, response: httpx.Response) -> None:
        body = b""
        if response.status_code >= 500:
            body = response.read()
        with self._lock:
            self.seen.append((response.request.method, response.request.url.path, response.status_code, body))

    def client(self, base: str) -> httpx.Client:
        """An API client whose every answer is recorded here."""
        return httpx.Client(base_url=base, timeout=30, event_hooks={"response": [self._record]})

    def server_errors(self) -> list[tuple[str, str, int, bytes]]:
        with self._lock:
            return [answer for answer in self.seen if answer[2] >= 500]

    def bare_server_errors(self) -> list[str]:
        """The 5xx answers whose body is not an ErrorResponse (code, message, correlation_id)."""
        bare = []
        for method, path, status, body in self.server_errors():
            try:
                parsed = httpx.Response(status, content=body).json()
                ok = isinstance(parsed, dict) and all(
                    parsed.get(key) for key in ("code", "message", "correlation_id")
                )
            except ValueError:
                ok = False
            if not ok:
                bare.append(f"{method} {path} -> {status}: {body[:200]!r}")
        return bare


# --- The summary table ------------------------------------------------------------------------------


@dataclass
class Row:
    """One scenario's line of the summary table."""

    fault: str
    accepted: int
    succeeded: int
    lost: int
    duplicated: int
    server_errors: int
    bare_5xx: int
    recovery_s: float | None


HEADER = (
    "| Fault | Jobs accepted | Succeeded | Lost | Duplicated artifacts | 5xx seen | 5xx without body "
    "| Recovery (s) |"
)


def render_table(rows: list[Row]) -> str:
    lines = [HEADER, "|" + "---|" * 8]
    for r in rows:
        recovery = f"{r.recovery_s:.1f}" if r.recovery_s is not None else "not recovered"
        cells = [
            r.fault,
            r.accepted,
            r.succeeded,
            r.lost,
            r.duplicated,
            r.server_errors,
            r.bare_5xx,
            recovery,
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def summary(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Row]]:
    """The rows the scenarios measured; printed (and written as markdown) once the module is done."""
    rows: list[Row] = []
    yield rows
    table = render_table(rows)
    path = tmp_path_factory.mktemp("fault-injection") / "summary.md"
    path.write_text(f"# Fault injection (tests/e2e/test_fault_injection.py)\n\n{table}\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.ensure_newline()
        reporter.write_line("")
        reporter.write_line("Fault injection summary (tests/e2e/test_fault_injection.py):")
        for line in table.splitlines():
            reporter.write_line(line)
        reporter.write_line(f"(also written to {path})")


# --- Jobs and their outcome -------------------------------------------------------------------------


def submit(client: httpx.Client, jobs: dict[str, int], **params: Any) -> str:
    """Create a job (must be accepted); `jobs` maps every accepted job id to its item count."""
    body = {**JOB, **params}
    response = client.post("/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job"]["id"]
    jobs[job_id] = int(body.get("count", 1))
    return job_id


def running(client: httpx.Client, job_id: str, completed: int = 0) -> Callable[[], bool]:
    """A condition: the job runs, has made progress, and has at least `completed` items stored."""

    def check() -> bool:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] != "running" or job["summary"]["completed"] < completed:
            return False
        return bool(client.get(f"/jobs/{job_id}/progress").json()["progress"] > 0)

    return check


def settle(
    client: httpx.Client, jobs: dict[str, int], since: float, limit: float = RECOVERY_LIMIT_SECONDS
) -> tuple[dict[str, Any], float | None]:
    """Poll until every job is terminal; returns their last status documents and the seconds since
    `since` it took (None if some job was still not terminal `limit` seconds after `since`)."""
    deadline = since + limit
    status: dict[str, Any] = {}
    while True:
        for job_id in jobs:
            if status.get(job_id, {}).get("status") not in TERMINAL:
                with contextlib.suppress(httpx.TransportError):
                    response = client.get(f"/jobs/{job_id}")
                    if response.status_code == 200:
                        status[job_id] = response.json()
        if all(status.get(j, {}).get("status") in TERMINAL for j in jobs):
            return status, time.monotonic() - since
        if time.monotonic() > deadline:
            return status, None
        time.sleep(0.1)


def duplicated_rows(db_url: str, job_ids: list[str]) -> int:
    """Artifact rows beyond one per (job, item, stage), straight from the database."""
    engine = create_db_engine(db_url)
    try:
        with make_session_factory(engine)() as s:
            stmt = (
                select(func.count())
                .select_from(Artifact)
                .where(Artifact.job_id.in_([uuid.UUID(j) for j in job_ids]))
                .group_by(Artifact.job_id, Artifact.item_index, Artifact.stage)
            )
            return sum(n - 1 for n in s.scalars(stmt))
    finally:
        engine.dispose()


def worker_of(db_url: str, job_id: str) -> str | None:
    """The `host:pid` of the worker holding the job now."""
    engine = create_db_engine(db_url)
    try:
        with make_session_factory(engine)() as s:
            job = s.get(Job, uuid.UUID(job_id))
            return job.worker_id if job is not None else None
    finally:
        engine.dispose()


def verify(
    fault: str,
    stack: Stack,
    s3: MotoS3,
    answers: Answers,
    jobs: dict[str, int],
    fault_at: float,
    summary: list[Row],
) -> dict[str, Any]:
    """Wait for the jobs to end, record the scenario's row, then check every promise.

    Lost: a job not terminal, or not succeeded, or an item of it without its artifact (row or object).
    Duplicated: a second row for an item, or an item listed twice.
    """
    with answers.client(stack.base) as client:
        status, recovery = settle(client, jobs, fault_at)
        artifacts: dict[str, list[dict[str, Any]]] = {}
        lost = duplicated = 0
        for job_id, count in jobs.items():
            if status.get(job_id, {}).get("status") != "succeeded":
                lost += 1
                continue
            listed = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"]
            artifacts[job_id] = listed
            indexes = [a["item_index"] for a in listed]
            duplicated += len(indexes) - len(set(indexes))
            objects = set(s3.keys(stack.bucket, f"jobs/{job_id}/"))
            lost += sum(1 for i in range(count) if i not in indexes)
            lost += sum(1 for a in listed if a["s3_key"] not in objects)
    duplicated += duplicated_rows(stack.db_url, list(jobs))
    bare = answers.bare_server_errors()
    succeeded = sum(1 for s in status.values() if s.get("status") == "succeeded")
    seen = len(answers.server_errors())
    summary.append(Row(fault, len(jobs), succeeded, lost, duplicated, seen, len(bare), recovery))

    assert recovery is not None, (
        f"{fault}: jobs not terminal {RECOVERY_LIMIT_SECONDS}s after the fault: {status}"
    )
    for job_id, count in jobs.items():
        job = status[job_id]
        assert job["status"] == "succeeded", (fault, job)
        assert sorted(a["item_index"] for a in artifacts[job_id]) == list(range(count)), (fault, job_id)
        assert s3.keys(stack.bucket, f"jobs/{job_id}/") == sorted(a["s3_key"] for a in artifacts[job_id])
        assert_artifacts_downloadable(artifacts[job_id])
    assert (lost, duplicated) == (0, 0), fault
    assert bare == [], f"{fault}: 5xx answers without an ErrorResponse body: {bare}"
    return status


@pytest.fixture
def answers() -> Answers:
    return Answers()


# --- The stack the faults hit -----------------------------------------------------------------------


@dataclass
class Faults:
    """The module's stack and the handles its faults act on."""

    stack: Stack
    s3: MotoS3
    # The services reach S3 through this proxy, so a scenario can take S3 away from them alone.
    s3_proxy: TcpProxy
    # The stack's private broker (None without a `redis-server` binary: the Redis scenario skips).
    redis: RedisServer | None


@pytest.fixture(scope="module")
def faults(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, moto_s3: MotoS3
) -> Iterator[Faults]:
    """One distributed stack (an API, two workers) shared by the scenarios, its workers warmed up.

    Shared because starting one is most of a scenario's cost on a small machine (every worker imports
    torch and loads the model on its first job); each scenario checks only its own jobs, and starts
    from a stack whose components are all ready.
    """
    root = tmp_path_factory.mktemp("faults")
    redis: RedisServer | None
    try:
        # A private broker, so the Redis scenario never restarts the machine's shared one.
        redis = RedisServer(root / "redis").start()
    except FileNotFoundError:
        redis = None
    proxy = TcpProxy(moto_s3.port).start()
    env: dict[str, Any] = {
        **ONE_THREAD,
        "DF_MINIO_ENDPOINT": f"http://127.0.0.1:{proxy.port}",
        # Clients download from moto directly: the S3 fault is between the services and S3.
        "DF_MINIO_PUBLIC_ENDPOINT": moto_s3.endpoint,
        # Exponential backoff from 0.2 s: 8 tries wait out an outage of about 20 s.
        "DF_STORAGE_RETRY_ATTEMPTS": "8",
    }
    if redis is not None:
        env["DF_REDIS_URL"] = redis.url
    handles: Faults | None = None
    try:
        with distributed_stack(root / "var", tiny_model_dir, moto_s3, workers=2, **env) as stack:
            handles = Faults(stack, moto_s3, proxy, redis)
            with httpx.Client(base_url=stack.base, timeout=30) as client:
                # One small job per worker (prefetch 1: each takes one), so both are warm.
                warm_up: dict[str, int] = {}
                for _ in stack.workers:
                    submit(client, warm_up, steps=1)
                assert settle(client, warm_up, time.monotonic(), limit=180)[1] is not None, "warm-up stuck"
                ran = {worker_of(stack.db_url, job_id) for job_id in warm_up}
                assert len(ran) == len(stack.workers), f"warm-up did not reach every worker: {ran}"
            yield handles
    finally:
        proxy.cut()
        # A scenario may have replaced the broker with a restarted one.
        broker = handles.redis if handles is not None else redis
        if broker is not None:
            broker.stop()


@pytest.fixture
def stack(faults: Faults) -> Stack:
    """The shared stack with two live workers, once every component answers its readiness check."""
    if sum(1 for w in faults.stack.workers if w.proc and w.proc.poll() is None) < 2:
        faults.stack.add_worker()  # only when a scenario that kills one ran before (out of order)
    wait_until(
        lambda: httpx.get(f"{faults.stack.api.root}/readyz", timeout=5).status_code == 200,
        "the stack is not ready before the scenario",
        30,
    )
    return faults.stack


# --- Scenarios --------------------------------------------------------------------------------------


def test_redis_restarted_mid_job(stack: Stack, faults: Faults, answers: Answers, summary: list[Row]) -> None:
    redis = faults.redis
    if redis is None:
        pytest.skip("redis-server is not on PATH")
    with answers.client(stack.base) as client:
        jobs: dict[str, int] = {}
        # Both workers busy, so the third job's message waits in Redis when Redis goes.
        busy = [submit(client, jobs, steps=30, count=2, batch_invariant=True) for _ in range(2)]
        waiting = submit(client, jobs, steps=3)
        wait_until(lambda: all(running(client, j)() for j in busy), "the first jobs never started", 60)
        assert client.get(f"/jobs/{waiting}").json()["status"] == "queued"

        fault_at = time.monotonic()
        redis.stop()
        refused = client.post("/jobs", json={**JOB, "steps": 2})
        # Nothing is accepted while the broker is away, and the answer says so (recorded, not counted).
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "broker_unavailable"
        time.sleep(1.0)
        faults.redis = RedisServer(redis.data_dir, port=redis.port).start()

    verify("Redis restarted mid-job", stack, faults.s3, answers, jobs, fault_at, summary)


def test_postgres_connections_killed_mid_job(
    stack: Stack, faults: Faults, answers: Answers, summary: list[Row]
) -> None:
    with answers.client(stack.base) as client:
        jobs: dict[str, int] = {}
        first = submit(client, jobs, steps=30, count=2, batch_invariant=True)
        submit(client, jobs, steps=20, count=2)
        submit(client, jobs, steps=10, count=2)
        wait_until(running(client, first), "the first job never started", 60)

    database = make_url(stack.db_url).database
    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    # A reader keeps asking while the connections die: each answer is recorded.
    stop = threading.Event()

    def poll() -> None:
        with answers.client(stack.base) as reader:
            while not stop.is_set():
                with contextlib.suppress(httpx.TransportError):
                    for job_id in jobs:
                        reader.get(f"/jobs/{job_id}")
                time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    fault_at = time.monotonic()
    killed = 0
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            for _ in range(3):
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                ).fetchall()
                killed += sum(1 for (ok,) in rows if ok)
                time.sleep(0.7)
    finally:
        stop.set()
        poller.join(10)
    assert killed > 0, "no connection of the stack was open to kill"

    verify("Postgres connections killed mid-job", stack, faults.s3, answers, jobs, fault_at, summary)


def test_s3_down_during_uploads(stack: Stack, faults: Faults, answers: Answers, summary: list[Row]) -> None:
    with answers.client(stack.base) as client:
        jobs: dict[str, int] = {}
        first = submit(client, jobs, steps=8, count=4, batch_invariant=True)
        submit(client, jobs, steps=4, count=2)
        wait_until(running(client, first, completed=1), "the first item was never stored", 60)
        retries_before = _upload_retries(stack)

        fault_at = time.monotonic()
        faults.s3_proxy.cut()
        try:
            time.sleep(1.0)
            ready = client.get(f"{stack.api.root}/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["details"]["failed"] == ["storage"]
            time.sleep(3.0)
            # The uploads in flight are still being retried: nothing was given up on.
            assert client.get(f"/jobs/{first}").json()["status"] == "running"
        finally:
            faults.s3_proxy.start()

        verify("S3 endpoint down 4 s during uploads", stack, faults.s3, answers, jobs, fault_at, summary)
        assert "storage_unavailable" not in client.get(f"/jobs/{first}/logs").text
    # The outage hit uploads in flight (tenacity logs each retry), and they went through in the end.
    assert _upload_retries(stack) > retries_before


def _upload_retries(stack: Stack) -> int:
    """How many S3 upload retries the stack's workers have logged so far."""
    return sum(w.log_text().count("Retrying") for w in stack.workers)


@dataclass
class Watcher:
    """An SSE client following a job to its `done`, resuming with Last-Event-ID when the stream breaks."""

    client: httpx.Client
    job_id: str
    events: list[SseEvent] = field(default_factory=list)
    connects: int = 0
    thread: threading.Thread | None = None

    def start(self, deadline: float) -> Watcher:
        self.thread = threading.Thread(target=self._run, args=(deadline,), daemon=True)
        self.thread.start()
        return self

    def _run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            headers = {"Last-Event-ID": str(self.events[-1].id)} if self.events else {}
            try:
                with self.client.stream(
                    "GET", f"/jobs/{self.job_id}/progress/stream", headers=headers, timeout=httpx.Timeout(5)
                ) as response:
                    self.connects += 1
                    if response.status_code == 200:
                        for item in iter_sse(response):
                            if isinstance(item, SseEvent):
                                self.events.append(item)
                                if item.event == "done":
                                    return
            except httpx.TransportError:
                pass  # the API is gone: try again until the replacement answers
            time.sleep(0.1)

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1].event == "done"


def _comparable(event: SseEvent) -> tuple[str | None, str, dict[str, Any]]:
    # An artifact event's URL is signed per stream; everything else is the same for every stream.
    return event.id, event.event, {k: v for k, v in event.data.items() if k != "artifact"}


def test_api_killed_while_clients_stream(
    stack: Stack, faults: Faults, answers: Answers, summary: list[Row]
) -> None:
    jobs: dict[str, int] = {}
    with answers.client(stack.base) as client:
        job_id = submit(client, jobs, steps=40, count=3, batch_invariant=True)
    clients = [answers.client(stack.base) for _ in range(3)]
    try:
        watchers = [Watcher(c, job_id).start(time.monotonic() + 90) for c in clients]
        wait_until(
            lambda: all(sum(e.event == "progress" for e in w.events) >= 3 for w in watchers),
            "the streams never got going",
            60,
        )
        fault_at = time.monotonic()
        stack.api.kill()
        seen_at_kill = [len(w.events) for w in watchers]
        # The replacement API on the same port: the clients reconnect to the address they know.
        stack.api = stack.api.restarted()
        wait_until(lambda: all(w.done for w in watchers), "a stream never got its `done`", 60)
    finally:
        for c in clients:
            c.close()

    status = verify("API SIGKILLed under 3 SSE streams", stack, faults.s3, answers, jobs, fault_at, summary)
    assert status[job_id]["attempts"] == 1  # the worker never noticed
    with answers.client(stack.base) as client:
        history = read_sse(client, f"/jobs/{job_id}/progress/stream", timeout=30)
    assert history[-1].event == "done"
    for watcher, at_kill in zip(watchers, seen_at_kill, strict=True):
        got = [int(e.id or 0) for e in watcher.events]
        # Strictly increasing across the reconnect: nothing repeated, nothing out of order.
        assert all(a < b for a, b in itertools.pairwise(got)), got
        # Nothing missed: exactly the history a fresh stream replays, ending with `done`.
        assert [_comparable(e) for e in watcher.events] == [_comparable(e) for e in history]
        assert watcher.connects >= 2 and at_kill < len(history), "the kill did not interrupt this stream"


def test_worker_killed_while_another_is_busy(
    stack: Stack, faults: Faults, answers: Answers, summary: list[Row]
) -> None:
    with answers.client(stack.base) as client:
        jobs: dict[str, int] = {}
        body = {"steps": 30, "count": 3, "batch_invariant": True}
        first, second = submit(client, jobs, **body), submit(client, jobs, **body)
        wait_until(lambda: running(client, first, 1)() and running(client, second)(), "not both running", 60)
        holders = [worker_of(stack.db_url, job_id) for job_id in (first, second)]
        assert None not in holders and holders[0] != holders[1], f"not spread over both workers: {holders}"
        # A worker id is `host:pid`: the victim is the worker running the first job.
        victim = next(w for w in stack.workers if w.proc and f"{holders[0]}".endswith(f":{w.proc.pid}"))
        kept = client.get(f"/jobs/{first}/artifacts").json()["artifacts"]

        fault_at = time.monotonic()
        victim.kill()

        status = verify("worker SIGKILLed, other busy", stack, faults.s3, answers, jobs, fault_at, summary)
        assert status[first]["attempts"] == 2, status[first]
        assert status[second]["attempts"] == 1, status[second]
        after = client.get(f"/jobs/{first}/artifacts").json()["artifacts"]
        assert {a["id"] for a in kept} <= {a["id"] for a in after}  # finished items kept, not redone
        assert "re-queued" in client.get(f"/jobs/{first}/logs").text
