"""Job events as the client and the CLI views see them."""

from __future__ import annotations

import io
import json

import httpx
from rich.console import Console

from dreamforge.cli.progress import JobBars, JobLines
from dreamforge.client import DreamForgeClient
from dreamforge.client.events import JobEvent
from dreamforge.events.kinds import EventKind

JOB_ID = "0" * 32
NEW_KIND = "heartbeat-v2"


def _stream_with_a_new_kind(request: httpx.Request) -> httpx.Response:
    """A newer server's progress stream: a kind this client does not know, then `done`."""
    assert request.url.path == f"/v1/jobs/{JOB_ID}/progress/stream"
    body = (
        f"id: 7\nevent: {NEW_KIND}\ndata: {json.dumps({'anything': 1, 'nested': {'a': [1, 2]}})}\n\n"
        f"id: 8\nevent: done\ndata: {json.dumps({'status': 'succeeded'})}\n\n"
    )
    return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, text=body)


def test_an_event_kind_added_by_a_newer_server_is_kept_and_ignored_by_the_views() -> None:
    assert NEW_KIND not in set(EventKind)  # the premise: this client has never heard of it
    transport = httpx.MockTransport(_stream_with_a_new_kind)
    with DreamForgeClient("http://df.test/v1", transport=transport) as client:
        events = list(client.stream_events(JOB_ID))

    assert [(e.id, e.event) for e in events] == [(7, NEW_KIND), (8, EventKind.done)]
    unknown = events[0]
    assert unknown.data == {"anything": 1, "nested": {"a": [1, 2]}}

    out = io.StringIO()
    console = Console(file=out, width=80)
    for view in (JobBars(console, JOB_ID, 1), JobLines(console, JOB_ID)):
        with view:
            view.event(unknown)
    assert "heartbeat" not in out.getvalue()


def test_plain_lines_show_status_logs_and_errors() -> None:
    out = io.StringIO()
    view = JobLines(Console(file=out, width=80), "job-1")
    with view:
        view.event(JobEvent(id=1, event="status", data={"status": "running"}))
        view.event(JobEvent(id=2, event="log", data={"level": "info", "message": "item 0: stored"}))
        view.event(JobEvent(id=3, event="error", data={"code": "oom", "message": "out of memory"}))
    assert out.getvalue().splitlines() == [
        "job job-1: running",
        "  info: item 0: stored",
        "  error: [oom] out of memory",
    ]
