"""Queries over jobs, their items and artifacts. Nothing here commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from dreamforge.db.tables import Artifact, Job, JobItem, utcnow
from dreamforge.jobs.state import JobStatus


def get_job(session: Session, job_id: uuid.UUID) -> Job | None:
    """The job with this id, if any."""
    return session.get(Job, job_id)


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
