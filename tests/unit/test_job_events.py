"""Job events as the client and the CLI views see them."""

from __future__ import annotations

import io

from rich.console import Console

from dreamforge.cli.progress import JobBars, JobLines
from dreamforge.client.events import JobEvent
from dreamforge.events.kinds import EventKind


def test_an_event_kind_added_by_a_newer_server_is_kept_and_ignored_by_the_views() -> None:
    event = JobEvent(id=7, event="heartbeat-v2", data={"anything": 1})
    assert event.event not in set(EventKind)
    out = io.StringIO()
    console = Console(file=out, width=80)
    for view in (JobBars(console, "0" * 32, 1), JobLines(console, "0" * 32)):
        with view:
            view.event(event)
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
