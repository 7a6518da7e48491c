"""Queries over persisted job events."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dreamforge.db.session import announce
from dreamforge.db.tables import JobEvent
from dreamforge.events.kinds import EventKind


def add_event(
    session: Session,
    job_id: uuid.UUID,
    kind: EventKind,
    data: dict[str, Any],
    item_index: int | None = None,
) -> JobEvent:
    """Stage one event in the session's transaction; the job's streams wake once it commits."""
    event = JobEvent(job_id=job_id, kind=kind.value, data=data, item_index=item_index)
    session.add(event)
    announce(session, job_id)
    return event


# The most events one `events_after` call returns.
EVENTS_PAGE = 500


def events_after(
    session: Session, job_id: uuid.UUID, after_id: int, limit: int = EVENTS_PAGE
) -> Sequence[JobEvent]:
    """Events of a job with an id greater than `after_id`, oldest first."""
    stmt = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
        .order_by(JobEvent.id)
        .limit(limit)
    )
    return session.scalars(stmt).all()


def log_events(
    session: Session, job_id: uuid.UUID, *, tail: int | None = None, since: datetime | None = None
) -> list[JobEvent]:
    """A job's log events, oldest first: all, those at or after `since`, and/or the last `tail`."""
    stmt = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == EventKind.log.value)
    if since is not None:
        stmt = stmt.where(JobEvent.ts >= since)
    if tail is not None:
        rows = list(session.scalars(stmt.order_by(JobEvent.id.desc()).limit(tail)).all())
        rows.reverse()
        return rows
    return list(session.scalars(stmt.order_by(JobEvent.id)).all())
