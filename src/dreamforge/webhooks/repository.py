"""Queries over webhook deliveries. Nothing here commits."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, case, func, or_, select, update
from sqlalchemy.orm import Session

from dreamforge.db.tables import WebhookDelivery

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"


def get_delivery(session: Session, delivery_id: uuid.UUID) -> WebhookDelivery | None:
    """The delivery with this id, if any."""
    return session.get(WebhookDelivery, delivery_id)


def job_deliveries(session: Session, job_id: uuid.UUID) -> Sequence[WebhookDelivery]:
    """A job's deliveries, oldest first."""
    stmt = (
        select(WebhookDelivery)
        .where(WebhookDelivery.job_id == job_id)
        .order_by(WebhookDelivery.created_at, WebhookDelivery.key)
    )
    return session.scalars(stmt).all()


def _attemptable(now: datetime) -> tuple[ColumnElement[bool], ...]:
    """Pending, due, and no attempt in flight."""
    return (WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now, _idle(now))


def _unsent(stale: datetime) -> ColumnElement[bool]:
    """No broker message carries it, or the one that does is overdue by `stale`."""
    return or_(WebhookDelivery.dispatched_at.is_(None), WebhookDelivery.dispatched_at < stale)


def _idle(now: datetime) -> ColumnElement[bool]:
    """No attempt is in flight: none started, or the one that did has lapsed (its process died)."""
    return or_(WebhookDelivery.sending_until.is_(None), WebhookDelivery.sending_until < now)


def due_deliveries(
    session: Session, now: datetime, limit: int, exclude: Collection[uuid.UUID] = ()
) -> list[uuid.UUID]:
    """Ids of pending deliveries whose next attempt is due and none is in flight, most overdue first."""
    stmt = (
        select(WebhookDelivery.id)
        .where(*_attemptable(now))
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit + len(exclude))
    )
    return [i for i in session.scalars(stmt).all() if i not in exclude][:limit]


def next_due_at(session: Session) -> datetime | None:
    """When the soonest pending delivery can be attempted: its due time, or its in-flight claim's end."""
    leased = WebhookDelivery.sending_until > WebhookDelivery.next_attempt_at
    when = case((leased, WebhookDelivery.sending_until), else_=WebhookDelivery.next_attempt_at)
    soonest: datetime | None = session.scalar(select(func.min(when)).where(WebhookDelivery.status == PENDING))
    return soonest


def claim_attempt(session: Session, delivery_id: uuid.UUID, now: datetime, lease_seconds: float) -> bool:
    """Take the delivery's next attempt if it is due and no other process is making one."""
    stmt = (
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, *_attemptable(now))
        .values(sending_until=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(session.execute(stmt), "rowcount", 0) == 1)


def undispatched_due(session: Session, now: datetime, stale: datetime, limit: int) -> list[uuid.UUID]:
    """Due pending deliveries that no broker message carries (or whose message is overdue by now)."""
    stmt = (
        select(WebhookDelivery.id)
        .where(*_attemptable(now), _unsent(stale))
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    return list(session.scalars(stmt).all())


def mark_dispatched(session: Session, delivery_id: uuid.UUID, due: datetime) -> None:
    """Record that a broker message carries the delivery, to be taken at `due`."""
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(dispatched_at=due)
        .execution_options(synchronize_session=False)
    )


def claim_dispatch(session: Session, delivery_id: uuid.UUID, now: datetime, stale: datetime) -> bool:
    """Take the right to send the delivery's message, so that of many sweeping processes one sends it."""
    stmt = (
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == PENDING, _unsent(stale))
        .values(dispatched_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(session.execute(stmt), "rowcount", 0) == 1)
