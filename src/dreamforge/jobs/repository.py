"""Queries over jobs, their items and artifacts. Nothing here commits."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, overload

from sqlalchemy import ColumnElement, Connection, bindparam, case, delete, func, select, update
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from dreamforge.db.compiled import CompiledSelect
from dreamforge.db.tables import Artifact, Job, JobEvent, JobItem, WebhookDelivery, utcnow
from dreamforge.jobs.state import TERMINAL, JobStatus

if TYPE_CHECKING:
    from psycopg import AsyncConnection


def get_job(session: Session, job_id: uuid.UUID) -> Job | None:
    """The job with this id, if any."""
    return session.get(Job, job_id)


@dataclass(frozen=True)
class ItemRecord:
    """An item's state as the status and progress documents show it."""

    item_index: int
    status: str
    progress: float
    seed: int | None
    stage: str | None


@dataclass(frozen=True)
class JobRecord:
    """A job's row as the status and progress documents read it, without the ORM's bookkeeping.

    The routes integrators poll read these: a Core row costs a fraction of an ORM load, and the
    items are read only if a document asks for them.
    """

    id: uuid.UUID
    type: str
    status: str
    params: dict[str, Any]
    count: int
    completed: int
    attempts: int
    model_id: uuid.UUID | None
    api_key_id: uuid.UUID | None
    error_code: str | None
    error_message: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    items: Sequence[ItemRecord] = field(repr=False, compare=False)


_RECORD_FIELDS = [name for name in JobRecord.__dataclass_fields__ if name != "items"]
# Compiled once per engine and run on the driver's cursor: these two run on every poll.
_JOB_RECORD = CompiledSelect(
    select(*(Job.__table__.c[name] for name in _RECORD_FIELDS)).where(
        Job.__table__.c.id == bindparam("job_id")
    )
)
_ITEM_FIELDS = (JobItem.item_index, JobItem.status, JobItem.progress, JobItem.seed, JobItem.stage)
_ITEM_RECORDS = CompiledSelect(
    select(*_ITEM_FIELDS).where(JobItem.job_id == bindparam("job_id")).order_by(JobItem.item_index)
)


# Postgres only (the async polled reads): the job and its items in one round trip, the items as one
# JSON array, so a job's parameters are not sent and decoded once per item.
_JOB_WITH_ITEMS = CompiledSelect(
    select(
        *(Job.__table__.c[name] for name in _RECORD_FIELDS),
        select(func.json_agg(aggregate_order_by(func.json_build_array(*_ITEM_FIELDS), JobItem.item_index)))
        .where(JobItem.job_id == Job.__table__.c.id)
        .scalar_subquery(),
    ).where(Job.__table__.c.id == bindparam("job_id"))
)


class _LazyItems(Sequence[ItemRecord]):
    """A job's items, read on first use: most status documents never look at them."""

    def __init__(self, load: Callable[[], list[ItemRecord]]) -> None:
        self._load = load

    @cached_property
    def _items(self) -> list[ItemRecord]:
        return self._load()

    @overload
    def __getitem__(self, index: int) -> ItemRecord: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ItemRecord]: ...
    def __getitem__(self, index: int | slice) -> ItemRecord | Sequence[ItemRecord]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)


def job_record(connection: Connection, job_id: uuid.UUID) -> JobRecord | None:
    """The job with this id as a `JobRecord` (its items read on first use, on the same connection)."""
    rows = _JOB_RECORD.rows(connection, {"job_id": job_id})
    if not rows:
        return None
    return JobRecord(
        **dict(zip(_RECORD_FIELDS, rows[0], strict=True)),
        items=_LazyItems(lambda: item_records(connection, job_id)),
    )


async def job_record_async(
    connection: AsyncConnection[Any], dialect: Dialect, job_id: uuid.UUID
) -> JobRecord | None:
    """`job_record` on an async psycopg connection (Postgres), its items read with it."""
    rows = await _JOB_WITH_ITEMS.rows_async(connection, dialect, {"job_id": job_id})
    if not rows:
        return None
    *fields, items = rows[0]
    return JobRecord(
        **dict(zip(_RECORD_FIELDS, fields, strict=True)),
        items=[ItemRecord(*item) for item in items or ()],
    )


def item_records(connection: Connection, job_id: uuid.UUID) -> list[ItemRecord]:
    """A job's items by index, as `ItemRecord`s."""
    return [ItemRecord(*row) for row in _ITEM_RECORDS.rows(connection, {"job_id": job_id})]


def lock_job(session: Session, job_id: uuid.UUID) -> Job | None:
    """The job, row-locked until the transaction ends, so no reconciler settles it meanwhile."""
    return session.get(Job, job_id, with_for_update=True)


def get_job_by_idempotency_key(session: Session, key: str) -> Job | None:
    """The job created with this `Idempotency-Key`, if any."""
    return session.scalars(select(Job).where(Job.idempotency_key == key)).first()


def jobs_in_status(session: Session, status: JobStatus) -> Sequence[Job]:
    """Jobs in `status`, oldest first."""
    return session.scalars(select(Job).where(Job.status == status.value).order_by(Job.created_at)).all()


def count_queued(session: Session) -> int:
    """How many jobs wait in status `queued`, across the service."""
    stmt = select(func.count()).select_from(Job).where(Job.status == JobStatus.queued.value)
    return int(session.scalar(stmt) or 0)


def count_active_jobs(session: Session, owner: uuid.UUID) -> int:
    """Jobs of the API key `owner` that are queued or running."""
    stmt = select(func.count()).where(
        Job.api_key_id == owner, Job.status.in_([JobStatus.queued.value, JobStatus.running.value])
    )
    return int(session.scalar(stmt) or 0)


def images_since(session: Session, owner: uuid.UUID, since: datetime) -> list[tuple[datetime, int]]:
    """(created_at, images) of the key's jobs created since `since`, oldest first.

    A job counts the images it asked for; one that failed or was canceled only those it made.
    """
    ended_early = Job.status.in_([JobStatus.failed.value, JobStatus.canceled.value])
    images = case((ended_early, Job.completed), else_=Job.count)
    stmt = (
        select(Job.created_at, images)
        .where(Job.api_key_id == owner, Job.created_at >= since)
        .order_by(Job.created_at)
    )
    return [(created, int(n)) for created, n in session.execute(stmt).all()]


def _changed_one(result: object) -> bool:
    return bool(getattr(result, "rowcount", 0) == 1)


def claim_job(session: Session, job_id: uuid.UUID, worker_id: str, lease_seconds: float) -> bool:
    """Atomically move a queued job to running for `worker_id`; False if another got it first."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued.value)
        .values(
            status=JobStatus.running.value,
            worker_id=worker_id,
            attempts=Job.attempts + 1,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return _changed_one(result)


def renew_lease(session: Session, job_id: uuid.UUID, worker_id: str, lease_seconds: float) -> bool:
    """Extend the lease of a job `worker_id` is running; False if the job is no longer its own."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running.value, Job.worker_id == worker_id)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return _changed_one(result)


def abandoned_jobs(session: Session, job_id: uuid.UUID | None = None) -> Sequence[Job]:
    """Running jobs whose lease has lapsed (their worker died or hung), locked for update."""
    stmt = select(Job).where(
        Job.status == JobStatus.running.value,
        Job.lease_expires_at.is_not(None),
        Job.lease_expires_at < utcnow(),
    )
    if job_id is not None:
        stmt = stmt.where(Job.id == job_id)
    # SKIP LOCKED: two reapers never settle the same job twice (ignored by SQLite, which has one writer).
    return session.scalars(stmt.order_by(Job.created_at).with_for_update(skip_locked=True)).all()


def undispatched_jobs(session: Session, older_than_seconds: float, limit: int = 100) -> Sequence[uuid.UUID]:
    """Queued jobs no broker message carries, left that way for longer than `older_than_seconds`."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    stmt = (
        select(Job.id)
        .where(Job.status == JobStatus.queued.value, Job.dispatched_at.is_(None), Job.updated_at < cutoff)
        .order_by(Job.created_at)
        .limit(limit)
    )
    return session.scalars(stmt).all()


def mark_dispatched(session: Session, job_id: uuid.UUID) -> None:
    """Record that the broker accepted a message for this job (no-op once a worker has it)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued.value)
        .values(dispatched_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def forget_dispatches(session: Session) -> list[uuid.UUID]:
    """Mark every queued job as carried by no message (the broker lost them); returns their ids."""
    stmt = (
        update(Job)
        .where(Job.status == JobStatus.queued.value, Job.dispatched_at.is_not(None))
        .values(dispatched_at=None)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    return list(session.scalars(stmt).all())


def delete_job(session: Session, job_id: uuid.UUID) -> None:
    """Remove a job no worker can have seen, with its items and events."""
    job = session.get(Job, job_id)
    if job is not None:
        session.delete(job)


def get_items(session: Session, job_id: uuid.UUID) -> Sequence[JobItem]:
    """A job's items by index."""
    return session.scalars(select(JobItem).where(JobItem.job_id == job_id).order_by(JobItem.item_index)).all()


def get_item(session: Session, job_id: uuid.UUID, item_index: int) -> JobItem | None:
    """One item of a job."""
    stmt = select(JobItem).where(JobItem.job_id == job_id, JobItem.item_index == item_index)
    return session.scalars(stmt).first()


def list_artifacts(session: Session, job_id: uuid.UUID, stage: str | None = None) -> Sequence[Artifact]:
    """A job's artifacts by item index (an item's `base` before its `final`); one stage if given."""
    stmt = select(Artifact).where(Artifact.job_id == job_id)
    if stage is not None:
        stmt = stmt.where(Artifact.stage == stage)
    # "base" < "final": an item's base image lists before its delivered one.
    return session.scalars(stmt.order_by(Artifact.item_index, Artifact.stage)).all()


def count_final_artifacts(session: Session, job_id: uuid.UUID) -> int:
    """How many items of the job have their delivered image stored."""
    stmt = select(func.count()).where(Artifact.job_id == job_id, Artifact.stage == "final")
    return int(session.scalar(stmt) or 0)


def get_artifact(session: Session, artifact_id: uuid.UUID) -> Artifact | None:
    """The artifact with this id."""
    return session.get(Artifact, artifact_id)


def get_artifact_for_item(
    session: Session, job_id: uuid.UUID, item_index: int, stage: str = "final"
) -> Artifact | None:
    """One item's stored artifact of `stage`, if any."""
    stmt = select(Artifact).where(
        Artifact.job_id == job_id, Artifact.item_index == item_index, Artifact.stage == stage
    )
    return session.scalars(stmt).first()


def cancel_requested(session: Session, job_id: uuid.UUID) -> bool:
    """True once a cancel was asked for the job (read by its worker between steps)."""
    stmt = select(Job.cancel_requested_at).where(Job.id == job_id)
    return session.scalars(stmt).first() is not None


# --- retention: finished jobs past their time (jobs.retention) -------------------------------------


def _expired(cutoff: datetime) -> list[ColumnElement[bool]]:
    """A job that ended (never a queued or running one) before `cutoff`."""
    return [
        Job.status.in_([s.value for s in TERMINAL]),
        Job.finished_at.is_not(None),
        Job.finished_at < cutoff,
    ]


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def lock_expired_jobs(session: Session, cutoff: datetime, limit: int) -> Sequence[Job]:
    """Up to `limit` jobs that finished before `cutoff`, oldest first, locked for update.

    SKIP LOCKED: two sweeping processes take different jobs (ignored by SQLite, which has one writer).
    """
    stmt = select(Job).where(*_expired(cutoff)).order_by(Job.finished_at, Job.id).limit(limit)
    return session.scalars(stmt.with_for_update(skip_locked=True)).all()


def artifact_keys(session: Session, job_ids: Sequence[uuid.UUID]) -> list[str]:
    """The object keys of these jobs' artifacts."""
    return list(session.scalars(select(Artifact.s3_key).where(Artifact.job_id.in_(job_ids))).all())


def delete_artifacts(session: Session, job_ids: Sequence[uuid.UUID]) -> int:
    """Delete these jobs' artifact rows; returns how many went."""
    result = session.execute(
        delete(Artifact).where(Artifact.job_id.in_(job_ids)).execution_options(synchronize_session=False)
    )
    return _rowcount(result)


def delete_expired_jobs(session: Session, job_ids: Sequence[uuid.UUID], cutoff: datetime) -> int:
    """Delete those of these jobs that still finished before `cutoff`, with their events, items,
    artifact rows and webhook deliveries; returns how many jobs went (0 for one another process
    deleted first).

    Children go explicitly rather than by the foreign keys' ON DELETE CASCADE, so the outcome does not
    depend on a connection having SQLite's `PRAGMA foreign_keys` on.
    """
    stmt = select(Job.id).where(Job.id.in_(job_ids), *_expired(cutoff)).order_by(Job.id)
    ids = list(session.scalars(stmt.with_for_update(skip_locked=True)).all())
    if not ids:
        return 0
    for table in (JobEvent, JobItem, Artifact, WebhookDelivery):
        session.execute(
            delete(table).where(table.job_id.in_(ids)).execution_options(synchronize_session=False)
        )
    result = session.execute(delete(Job).where(Job.id.in_(ids)).execution_options(synchronize_session=False))
    return _rowcount(result)


def expired_job_summaries(
    session: Session, cutoff: datetime
) -> list[tuple[uuid.UUID, str, datetime, int, int]]:
    """(id, status, finished_at, artifacts, bytes) of each job that finished before `cutoff`, oldest first."""
    stmt = (
        select(
            Job.id,
            Job.status,
            Job.finished_at,
            func.count(Artifact.id),
            func.coalesce(func.sum(Artifact.size_bytes), 0),
        )
        .outerjoin(Artifact, Artifact.job_id == Job.id)
        .where(*_expired(cutoff))
        .group_by(Job.id, Job.status, Job.finished_at)
        .order_by(Job.finished_at, Job.id)
    )
    return [
        (job_id, status, finished, int(n), int(size))
        for job_id, status, finished, n, size in session.execute(stmt).all()
        if finished is not None
    ]
