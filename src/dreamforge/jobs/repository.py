"""Queries over jobs, their items and artifacts. Nothing here commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dreamforge.api.schemas import JobStatus
from dreamforge.db.tables import Artifact, Job, JobItem, utcnow


def get_job(session: Session, job_id: uuid.UUID) -> Job | None:
    """The job with this id, if any."""
    return session.get(Job, job_id)


def get_job_by_idempotency_key(session: Session, key: str) -> Job | None:
    """The job created with this `Idempotency-Key`, if any."""
    return session.scalars(select(Job).where(Job.idempotency_key == key)).first()


def jobs_in_status(session: Session, status: JobStatus) -> Sequence[Job]:
    """Jobs in `status`, oldest first."""
    return session.scalars(select(Job).where(Job.status == status.value).order_by(Job.created_at)).all()


def claim_job(session: Session, job_id: uuid.UUID, worker_id: str) -> bool:
    """Atomically move a queued job to running for `worker_id`; False if another got it first."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued.value)
        .values(
            status=JobStatus.running.value,
            worker_id=worker_id,
            attempts=Job.attempts + 1,
            started_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def get_items(session: Session, job_id: uuid.UUID) -> Sequence[JobItem]:
    """A job's items by index."""
    return session.scalars(select(JobItem).where(JobItem.job_id == job_id).order_by(JobItem.item_index)).all()


def get_item(session: Session, job_id: uuid.UUID, item_index: int) -> JobItem | None:
    """One item of a job."""
    stmt = select(JobItem).where(JobItem.job_id == job_id, JobItem.item_index == item_index)
    return session.scalars(stmt).first()


def list_artifacts(session: Session, job_id: uuid.UUID) -> Sequence[Artifact]:
    """A job's artifacts by item index."""
    return session.scalars(
        select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.item_index)
    ).all()


def get_artifact_for_item(session: Session, job_id: uuid.UUID, item_index: int) -> Artifact | None:
    """The artifact of one item, if stored."""
    stmt = select(Artifact).where(Artifact.job_id == job_id, Artifact.item_index == item_index)
    return session.scalars(stmt).first()


def get_artifact_by_key(session: Session, s3_key: str) -> Artifact | None:
    """The artifact stored under `s3_key`."""
    return session.scalars(select(Artifact).where(Artifact.s3_key == s3_key)).first()
