"""The kinds of job events; each is persisted, numbered and streamed over SSE."""

from __future__ import annotations

from enum import StrEnum


class EventKind(StrEnum):
    """What an event reports."""

    status = "status"
    progress = "progress"
    log = "log"
    artifact = "artifact"
    error = "error"
    # Last event of every job, carrying its terminal status; SSE streams close after it.
    done = "done"
