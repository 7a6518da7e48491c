"""Cancelling a job, without a server: the client against `httpx.MockTransport`, the CLI and its views."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from dreamforge.cli import jobs as jobs_cli
from dreamforge.cli.main import app
from dreamforge.cli.progress import JobBars, JobLines
from dreamforge.client import ApiStatusError, DreamForgeClient, JobStatus
from dreamforge.client.events import JobEvent
from dreamforge.jobs.state import TERMINAL

JOB_ID = uuid.UUID(int=7)
BASE = "http://df.test/v1"
TS = "2025-09-12T21:00:00Z"


def job_body(
    status: str, *, completed: int = 0, count: int = 3, cancel_requested: bool = False
) -> dict[str, Any]:
    """A `JobStatusResponse` as the server sends it."""
    body: dict[str, Any] = {
        "id": str(JOB_ID),
        "type": "generate",
        "status": status,
        "created_at": TS,
        "updated_at": TS,
        "summary": {"count": count, "completed": completed},
        "attempts": 1,
        "started_at": None if status == "queued" else TS,
        "finished_at": TS if status in TERMINAL else None,
    }
    if cancel_requested:
        body["cancel_requested_at"] = TS
    if status == "failed":
        body["error"] = {"code": "oom", "message": "out of memory"}
    return body


def job_finished(status: str) -> httpx.Response:
    return httpx.Response(
        409,
        json={
            "code": "job_finished",
            "message": f"job {JOB_ID} already {status}",
            "details": {"status": status},
            "correlation_id": "req-1",
        },
    )


def sse(*events: tuple[str, dict[str, Any]]) -> httpx.Response:
    text = "".join(
        f"id: {i}\nevent: {kind}\ndata: {json.dumps(data)}\n\n" for i, (kind, data) in enumerate(events, 1)
    )
    return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, text=text)


def canceled_stream(*, stored: int = 1) -> httpx.Response:
    """A job canceled while item `stored` rendered; items before it were stored."""
    events: list[tuple[str, dict[str, Any]]] = [
        ("status", {"status": "queued"}),
        ("status", {"status": "running"}),
    ]
    for index in range(stored):
        events += [
            ("progress", {"item_index": index, "progress": 1.0, "step": 4, "steps": 4, "overall": 0.3}),
            ("artifact", {"item_index": index}),
        ]
    events += [
        ("progress", {"item_index": stored, "progress": 0.2, "step": 1, "steps": 4, "overall": 0.4}),
        ("log", {"level": "info", "message": "job canceled", "job_id": str(JOB_ID), "ts": TS}),
        ("status", {"status": "canceled"}),
        ("done", {"status": "canceled", "error": None}),
    ]
    return sse(*events)


Answer = httpx.Response | Callable[[httpx.Request], httpx.Response]


class FakeApi:
    """Answers `(method, path under /v1)` with queued responses; the last one repeats. Records each call."""

    def __init__(self, routes: dict[tuple[str, str], list[Answer]]) -> None:
        self.routes = routes
        self.calls: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        key = (request.method, request.url.path.removeprefix("/v1"))
        self.calls.append(key)
        queue = self.routes.get(key)
        if not queue:
            return httpx.Response(
                404, json={"code": "not_found", "message": f"no route {key}", "details": {}}
            )
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        return answer(request) if callable(answer) else answer

    def client(self) -> DreamForgeClient:
        return DreamForgeClient(BASE, transport=httpx.MockTransport(self))


CANCEL = ("POST", f"/jobs/{JOB_ID}/cancel")
GET = ("GET", f"/jobs/{JOB_ID}")
STREAM = ("GET", f"/jobs/{JOB_ID}/progress/stream")
LOGS = ("GET", f"/jobs/{JOB_ID}/logs")
ARTIFACTS = ("GET", f"/jobs/{JOB_ID}/artifacts")


# --- the client ---------------------------------------------------------------------------------


def test_cancel_job_posts_and_parses_the_202() -> None:
    api = FakeApi({CANCEL: [httpx.Response(202, json=job_body("running", cancel_requested=True))]})
    with api.client() as client:
        status = client.cancel_job(JOB_ID)
    assert api.calls == [CANCEL]
    assert status.id == JOB_ID
    assert status.status is JobStatus.running
    assert status.cancel_requested_at == datetime(2025, 9, 12, 21, tzinfo=UTC)


def test_cancel_job_of_a_finished_job_raises_job_finished_and_is_not_retried() -> None:
    api = FakeApi({CANCEL: [job_finished("succeeded")]})
    with api.client() as client, pytest.raises(ApiStatusError) as caught:
        client.cancel_job(str(JOB_ID))
    assert caught.value.status == 409
    assert caught.value.code == "job_finished"
    assert caught.value.error.details == {"status": "succeeded"}
    assert api.calls == [CANCEL]


def test_cancel_job_is_retried_like_a_read() -> None:
    # Cancelling is idempotent on the server, so a lost answer or a 503 is simply asked again.
    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    api = FakeApi(
        {
            CANCEL: [
                drop,
                httpx.Response(503, json={"code": "not_ready", "message": "restarting", "details": {}}),
                httpx.Response(202, json=job_body("canceled")),
            ]
        }
    )
    with api.client() as client:
        assert client.cancel_job(JOB_ID).status is JobStatus.canceled
    assert api.calls == [CANCEL] * 3


def test_wait_returns_on_a_canceled_done_event() -> None:
    api = FakeApi(
        {STREAM: [canceled_stream()], GET: [httpx.Response(200, json=job_body("canceled", completed=1))]}
    )
    seen: list[JobEvent] = []
    with api.client() as client:
        final = client.wait(JOB_ID, on_event=seen.append)
    assert final.status is JobStatus.canceled
    assert final.summary.completed == 1
    assert seen[-1].event == "done" and seen[-1].data == {"status": "canceled", "error": None}


def test_terminal_statuses_include_canceled() -> None:
    assert {JobStatus.succeeded, JobStatus.failed, JobStatus.canceled} == TERMINAL


# --- the views ----------------------------------------------------------------------------------


def test_plain_lines_end_with_canceled_once() -> None:
    out = io.StringIO()
    view = JobLines(Console(file=out, width=80), "job-1")
    with view:
        view.event(JobEvent(id=1, event="status", data={"status": "running"}))
        view.event(JobEvent(id=2, event="status", data={"status": "canceled"}))
        view.event(JobEvent(id=3, event="done", data={"status": "canceled", "error": None}))
    assert out.getvalue().splitlines() == ["job job-1: running", "job job-1: canceled"]

    # A stream whose `done` is the only word of the ending still ends the lines with it.
    out = io.StringIO()
    view = JobLines(Console(file=out, width=80), "job-1")
    with view:
        view.event(JobEvent(id=1, event="status", data={"status": "running"}))
        view.event(JobEvent(id=2, event="done", data={"status": "canceled", "error": None}))
    assert out.getvalue().splitlines() == ["job job-1: running", "job job-1: canceled"]


def test_bars_end_with_canceled_not_an_error() -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=True, color_system=None)
    view = JobBars(console, str(JOB_ID), 3)
    with view:
        for event in (
            JobEvent(id=1, event="status", data={"status": "running"}),
            JobEvent(id=2, event="progress", data={"item_index": 0, "progress": 1.0, "step": 4, "steps": 4}),
            JobEvent(id=3, event="artifact", data={"item_index": 0}),
            JobEvent(id=4, event="progress", data={"item_index": 1, "progress": 0.5, "step": 2, "steps": 4}),
            JobEvent(id=5, event="done", data={"status": "canceled", "error": None}),
        ):
            view.event(event)
    final = out.getvalue().rsplit("\x1b[?25l", 1)[-1]  # the last frame drawn
    lines = [line for line in final.splitlines() if "item" in line or "job" in line]
    assert any("job" in line and "canceled" in line for line in lines), final
    assert any("item 0" in line and "stored" in line for line in lines), final
    assert any("item 1" in line and "canceled" in line for line in lines), final
    assert "error" not in out.getvalue()


# --- the CLI ------------------------------------------------------------------------------------


@pytest.fixture
def use_api(monkeypatch: pytest.MonkeyPatch) -> Callable[[FakeApi], None]:
    """Make the `dreamforge job` commands talk to a `FakeApi`."""

    def install(api: FakeApi) -> None:
        monkeypatch.setattr(
            jobs_cli,
            "DreamForgeClient",
            lambda api_base, api_key=None: DreamForgeClient(
                api_base, api_key=api_key, transport=httpx.MockTransport(api)
            ),
        )

    return install


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["job", *args, "--api-base", BASE], terminal_width=80)


def test_cancel_help_names_its_flags_and_exit_codes() -> None:
    help_text = CliRunner().invoke(app, ["job", "cancel", "--help"], terminal_width=80).output
    for flag in ("--wait", "--api-base", "--output", "--quiet", "--verbose", "job_finished"):
        assert flag in help_text
    group = CliRunner().invoke(app, ["job", "--help"], terminal_width=80).output
    assert "4    the job failed or was canceled" in group
    assert "job cancel --wait: the job did not end canceled" in group
    assert max(len(line) for line in group.splitlines()) <= 80


def test_cancel_prints_the_accepted_status(use_api: Callable[[FakeApi], None]) -> None:
    use_api(FakeApi({CANCEL: [httpx.Response(202, json=job_body("running", cancel_requested=True))]}))
    result = cli("cancel", str(JOB_ID))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "running"
    assert "cancel requested" in result.stderr

    result = cli("cancel", str(JOB_ID), "-o", "table")
    assert result.exit_code == 0, result.output
    assert "cancel requested" in result.stdout and "2025-09-12T21:00:00" in result.stdout

    use_api(FakeApi({CANCEL: [httpx.Response(202, json=job_body("canceled"))]}))
    result = cli("cancel", str(JOB_ID), "-o", "table", "-q")
    assert result.exit_code == 0, result.output
    assert "canceled" in result.stdout and str(JOB_ID) in result.stdout
    assert result.stderr == ""


def test_cancel_wait_follows_the_job_until_it_is_canceled(use_api: Callable[[FakeApi], None]) -> None:
    api = FakeApi(
        {
            CANCEL: [httpx.Response(202, json=job_body("running", cancel_requested=True))],
            GET: [
                httpx.Response(200, json=job_body("running", cancel_requested=True)),
                httpx.Response(200, json=job_body("canceled", completed=1)),
            ],
            STREAM: [canceled_stream()],
        }
    )
    use_api(api)
    result = cli("cancel", str(JOB_ID), "--wait")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "canceled"
    assert f"job {JOB_ID}: canceled" in result.stderr
    assert f"job {JOB_ID} canceled: 1 of 3 image(s) finished before it stopped" in result.stderr
    assert api.calls[0] == CANCEL and STREAM in api.calls


def test_cancel_wait_of_a_job_that_finished_first_exits_4(use_api: Callable[[FakeApi], None]) -> None:
    succeeded = sse(("status", {"status": "succeeded"}), ("done", {"status": "succeeded", "error": None}))
    use_api(
        FakeApi(
            {
                CANCEL: [httpx.Response(202, json=job_body("running", cancel_requested=True))],
                GET: [
                    httpx.Response(200, json=job_body("running", cancel_requested=True)),
                    httpx.Response(200, json=job_body("succeeded", completed=3)),
                ],
                STREAM: [succeeded],
            }
        )
    )
    result = cli("cancel", str(JOB_ID), "--wait", "-q")
    assert result.exit_code == 4, result.output
    assert json.loads(result.stdout)["status"] == "succeeded"
    assert result.stderr.strip() == f"job {JOB_ID} succeeded before the cancel took effect"


@pytest.mark.parametrize(("status", "code"), [(409, "job_finished"), (404, "not_found")])
def test_cancel_api_errors_exit_1_with_the_error_response(
    use_api: Callable[[FakeApi], None], status: int, code: str
) -> None:
    answer = (
        job_finished("failed")
        if status == 409
        else httpx.Response(404, json={"code": "not_found", "message": "no such job", "details": {}})
    )
    use_api(FakeApi({CANCEL: [answer]}))
    for extra in ([], ["--wait"]):
        result = cli("cancel", str(JOB_ID), *extra)
        assert result.exit_code == 1, result.output
        assert result.stdout == ""
        assert json.loads(result.stderr)["code"] == code


def test_cancel_of_a_bad_uuid_is_a_usage_error() -> None:
    result = cli("cancel", "not-a-uuid")
    assert result.exit_code == 2
    assert result.stdout == ""


def test_commands_that_follow_a_job_exit_4_when_it_is_canceled(use_api: Callable[[FakeApi], None]) -> None:
    def api() -> FakeApi:
        def get(request: httpx.Request) -> httpx.Response:
            # Running until the stream has told the story to the end.
            ended = STREAM in fake.calls
            return httpx.Response(
                200, json=job_body("canceled", completed=1) if ended else job_body("running")
            )

        fake = FakeApi(
            {
                ("POST", "/jobs"): [httpx.Response(202, json={"job": job_body("queued")})],
                GET: [get],
                STREAM: [canceled_stream()],
                LOGS: [httpx.Response(200, text="")],
                ARTIFACTS: [httpx.Response(200, json={"artifacts": []})],
                ("GET", f"/jobs/{JOB_ID}/progress"): [
                    httpx.Response(200, json={"job_id": str(JOB_ID), "progress": 0.4, "items": []})
                ],
            }
        )
        return fake

    for args in (
        ["create", "--prompt", "a cat", "--width", "64", "--height", "64", "--wait"],
        ["progress", str(JOB_ID), "--stream"],
        ["progress", str(JOB_ID), "--stream", "-o", "table"],
        ["logs", str(JOB_ID), "--follow"],
    ):
        use_api(api())
        result = cli(*args)
        assert result.exit_code == 4, (args, result.output)
        assert f"job {JOB_ID} canceled: 1 of 3 image(s) finished before it stopped" in result.stderr, args
        assert "error" not in result.stderr, args
