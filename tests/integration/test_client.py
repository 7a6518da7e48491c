"""The public Python client (`dreamforge.client`) against a real `dreamforge serve`."""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import make_server_env
from PIL import Image
from support import ServerProcess, TcpProxy, free_port

from dreamforge.client import (
    ApiStatusError,
    ApiUnreachable,
    Artifact,
    DreamForgeClient,
    JobCreatedResponse,
    JobCreateRequest,
    JobEvent,
    JobStatus,
    JobStatusResponse,
    LogEvent,
    ModelDescriptor,
)

SMALL = {"prompt": "a lighthouse at dawn", "width": 64, "height": 64, "steps": 3}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("client") / "var"
    server = ServerProcess(data_dir=data_dir, env=make_server_env(data_dir, tiny_model_dir)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def df(server: ServerProcess) -> Iterator[DreamForgeClient]:
    with DreamForgeClient(server.base) as client:
        yield client


def test_every_endpoint_returns_the_api_models(df: DreamForgeClient, tmp_path: Path) -> None:
    assert df.health().status == "ok"
    assert df.ready().checks == {"database": "ok", "storage": "ok"}
    models = df.list_models().models
    assert [m.name for m in models] == ["tiny-sdxl"]
    model = df.get_model(models[0].id)
    assert isinstance(model, ModelDescriptor) and model.autov2

    request = JobCreateRequest(type="generate", count=2, seed=7, **SMALL)
    created = df.create_job(request)
    assert isinstance(created, JobCreatedResponse) and not created.replayed
    assert created.job.status is JobStatus.queued

    seen: list[JobEvent] = []
    final = df.wait(created.job.id, on_event=seen.append)
    assert isinstance(final, JobStatusResponse)
    assert final.status is JobStatus.succeeded and final.summary.completed == 2
    assert seen[-1].event == "done" and seen[-1].data["status"] == "succeeded"
    assert {e.data["item_index"] for e in seen if e.event == "progress"} == {0, 1}

    artifacts = df.list_artifacts(created.job.id).artifacts
    assert all(isinstance(a, Artifact) for a in artifacts)
    assert artifacts[0].seed == 7
    path = tmp_path / "0.png"
    size = df.download_artifact(artifacts[0], path)
    assert size == artifacts[0].size_bytes
    assert hashlib.sha256(path.read_bytes()).hexdigest() == artifacts[0].sha256

    logs = df.get_logs(created.job.id)
    assert all(isinstance(line, LogEvent) for line in logs)
    assert logs[-1].message.startswith("job succeeded")
    assert df.get_logs(created.job.id, tail=1) == logs[-1:]
    assert df.get_logs(created.job.id, since=logs[-1].ts) == [line for line in logs if line.ts >= logs[-1].ts]
    # A `log` event on the stream is the same line `/logs` returns.
    streamed = [e.as_log() for e in seen if e.event == "log"]
    assert streamed == logs

    progress = df.get_progress(created.job.id)
    assert progress.progress == 1.0 and len(progress.items) == 2


def test_idempotency_key_replays_the_same_job(df: DreamForgeClient) -> None:
    key = f"k-{uuid.uuid4()}"
    first = df.create_job(SMALL, idempotency_key=key)
    again = df.create_job(SMALL, idempotency_key=key)
    assert again.job.id == first.job.id and again.replayed
    with pytest.raises(ApiStatusError) as caught:
        df.create_job({**SMALL, "prompt": "something else"}, idempotency_key=key)
    assert caught.value.status == 409 and caught.value.code == "idempotency_key_reused"
    df.wait(first.job.id)


def test_errors_carry_the_error_response(df: DreamForgeClient) -> None:
    missing = uuid.uuid4()
    with pytest.raises(ApiStatusError) as caught:
        df.get_job(missing)
    assert caught.value.status == 404
    assert caught.value.error.code == "not_found"
    assert caught.value.error.details["id"] == str(missing)
    assert caught.value.error.correlation_id

    with pytest.raises(ApiStatusError) as caught:
        df.create_job({**SMALL, "width": 100})
    assert caught.value.status == 422
    assert caught.value.error.details["errors"][0]["field"] == "width"

    with pytest.raises(ApiStatusError) as caught:
        list(df.stream_events(missing))
    assert caught.value.status == 404


def test_unreachable_and_foreign_servers(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    with DreamForgeClient(base) as df, pytest.raises(ApiUnreachable) as caught:
        df.get_job(uuid.uuid4())
    assert caught.value.url == base and caught.value.reason == "connection refused"
    assert time.monotonic() - started < 10

    with pytest.raises(ValueError, match="http"):
        DreamForgeClient("localhost:8001")

    # A web server that is not Dream Forge: errors and bodies still come back as ErrorResponses.
    job_id = uuid.uuid4()
    (tmp_path / "v1" / "jobs").mkdir(parents=True)
    (tmp_path / "v1" / "jobs" / str(job_id)).write_text("<html>hello</html>")
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    web = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        with DreamForgeClient(f"http://127.0.0.1:{web.server_address[1]}/v1") as df:
            with pytest.raises(ApiStatusError) as foreign:
                df.get_job(job_id)
            assert foreign.value.status == 200 and foreign.value.code == "invalid_response"
            with pytest.raises(ApiStatusError) as foreign:
                df.get_job(uuid.uuid4())
            assert foreign.value.status == 404 and foreign.value.code == "http_404"
    finally:
        web.shutdown()
        web.server_close()


def test_the_stream_resumes_after_a_dropped_connection(server: ServerProcess, df: DreamForgeClient) -> None:
    # The embedded worker runs one job at a time: `blocker` keeps `job` queued while we cut the line.
    blocker = df.create_job({**SMALL, "count": 4, "steps": 40})
    job = df.create_job(SMALL)
    proxy = TcpProxy(server.port).start()
    received: list[JobEvent] = []
    try:
        with DreamForgeClient(f"http://127.0.0.1:{proxy.port}/v1") as via_proxy:
            for event in via_proxy.stream_events(job.job.id):
                received.append(event)
                if len(received) == 2:
                    assert df.get_job(job.job.id).status is not JobStatus.succeeded
                    proxy.cut()  # drops the open stream, as a load balancer restart would
                    proxy.start()
    finally:
        proxy.cut()
    assert received[-1].event == "done" and received[-1].data["status"] == "succeeded"
    # Exactly the job's history: nothing lost or repeated across the reconnect.
    assert [e.id for e in received] == [e.id for e in df.stream_events(job.job.id)]
    assert len(received) > 2
    assert proxy.accepted >= 2, "the client never reconnected"
    df.wait(blocker.job.id)


def test_follow_logs_prints_new_lines_until_the_job_ends(df: DreamForgeClient) -> None:
    blocker = df.create_job({**SMALL, "count": 2, "steps": 30})
    job = df.create_job(SMALL)
    lines = list(df.follow_logs(job.job.id, tail=1))
    assert lines[0].message.startswith("job accepted")
    assert lines[-1].message.startswith("job succeeded")
    assert lines == df.get_logs(job.job.id)
    df.wait(blocker.job.id)


def test_the_readme_example_runs(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = re.search(r"## The Python client.*?```python\n(.*?)```", readme, re.S)
    assert example is not None
    code = (
        example[1]
        .replace("http://localhost:8001/v1", server.base)
        .replace('"width": 1024, "height": 1024', '"width": 64, "height": 64, "steps": 2')
    )
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert Image.open(tmp_path / "0.png").size == (64, 64)
