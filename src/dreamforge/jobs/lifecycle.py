"""Status changes of a job and the events that go with them; used by every runner.

Functions stage changes in the caller's session; the caller commits, and the events staged here are
announced to streams once it has (`db.session.announce_commits`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from dreamforge.db.tables import Job, utcnow
from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError
from dreamforge.events.kinds import EventKind
from dreamforge.events.repository import add_event
from dreamforge.jobs import repository as jobs_repo
from dreamforge.jobs.state import TERMINAL, JobStatus, check_transition
from dreamforge.webhooks.outbox import WebhookEvent, stage_delivery

log = logging.getLogger(__name__)


def log_event(
    session: Session, job_id: uuid.UUID, level: str, message: str, item_index: int | None = None
) -> None:
    """Stage a log event and mirror it to the process log (its ids as fields of JSON log lines)."""
    ids: dict[str, Any] = {"job_id": str(job_id)}
    if item_index is not None:
        ids["item_index"] = item_index
    log.log(logging.getLevelNamesMapping()[level.upper()], "job %s: %s", job_id, message, extra=ids)
    data: dict[str, Any] = {"level": level, "message": message}
    if item_index is not None:
        data["item_index"] = item_index
    add_event(session, job_id, EventKind.log, data, item_index)


def finish_job(
    session: Session,
    job: Job,
    status: JobStatus,
    error_code: ErrorCode | None = None,
    error_message: str | None = None,
) -> None:
    """Stage a terminal transition with its error, log and `done` events, and its `completed` webhook."""
    check_transition(job.status, status)
    now = utcnow()
    job.status = status.value
    job.lease_expires_at = None
    job.finished_at = now
    job.updated_at = now
    error = None
    if status is JobStatus.failed:
        job.error_code = error_code
        job.error_message = error_message
        error = {"code": error_code, "message": error_message}
        add_event(session, job.id, EventKind.error, error)
        log_event(session, job.id, "error", f"job failed: [{error_code}] {error_message}")
    elif status is JobStatus.canceled:
        log_event(session, job.id, "info", f"job canceled: {job.completed}/{job.count} item(s) finished")
    else:
        log_event(session, job.id, "info", f"job succeeded: {job.completed}/{job.count} item(s)")
    add_event(session, job.id, EventKind.status, {"status": status.value})
    add_event(session, job.id, EventKind.done, {"status": status.value, "error": error})
    stage_delivery(session, job, WebhookEvent.completed)


class JobFinished(DreamForgeError):
    """A job that already succeeded or failed cannot be canceled."""

    code = ErrorCode.job_finished
    status = 409

    def __init__(self, job: Job) -> None:
        super().__init__(
            f"job {job.id} already {job.status}; there is nothing to cancel", details={"status": job.status}
        )


def request_cancel(session: Session, job: Job) -> None:
    """Stage a cancel: a queued job ends `canceled` now; a running one is flagged for its worker.

    Idempotent for a job already canceled or being canceled; `JobFinished` for one that ended otherwise.
    """
    status = JobStatus(job.status)
    if status is JobStatus.canceled or job.cancel_requested_at is not None:
        return
    if status in TERMINAL:
        raise JobFinished(job)
    if status is JobStatus.queued:
        finish_job(session, job, JobStatus.canceled)
        return
    job.cancel_requested_at = utcnow()
    job.updated_at = job.cancel_requested_at
    log_event(session, job.id, "info", "cancel requested; the job stops at its next step")


def requeue_job(session: Session, job: Job, reason: str, *, attempt_used: bool = True) -> None:
    """Stage running -> queued; `attempt_used=False` (a clean shutdown) gives the attempt back.

    Only attempts that ended in a crash count toward the attempt limit.
    """
    check_transition(job.status, JobStatus.queued)
    job.status = JobStatus.queued.value
    job.worker_id = None
    job.lease_expires_at = None
    # No message carries the job now: whoever re-queues it sends one, or the reconciler does.
    job.dispatched_at = None
    job.updated_at = utcnow()
    if not attempt_used:
        job.attempts -= 1
    # Items without an artifact start over (with their recorded seeds) on the next attempt.
    for item in jobs_repo.get_items(session, job.id):
        if item.status == "running":
            item.status = "pending"
            item.progress = 0.0
    add_event(session, job.id, EventKind.status, {"status": JobStatus.queued.value})
    log_event(session, job.id, "warning", f"{reason}; re-queued")


# (re-queued ids, ended ids: failed out of attempts, or canceled).
Settled = tuple[list[uuid.UUID], list[uuid.UUID]]


def _settle(session: Session, jobs: Sequence[Job], max_attempts: int) -> Settled:
    requeued: list[uuid.UUID] = []
    failed: list[uuid.UUID] = []
    for job in jobs:
        if job.cancel_requested_at is not None:
            # Its worker died before it could stop: the cancel still holds.
            finish_job(session, job, JobStatus.canceled)
            failed.append(job.id)
        elif job.attempts >= max_attempts:
            finish_job(
                session,
                job,
                JobStatus.failed,
                ErrorCode.worker_lost,
                f"the worker stopped while running this job {job.attempts} time(s); giving up",
            )
            failed.append(job.id)
        else:
            requeue_job(session, job, f"the worker running attempt {job.attempts} stopped")
            requeued.append(job.id)
    return requeued, failed


def settle_interrupted(session: Session, max_attempts: int) -> Settled:
    """Settle every job left `running`: re-queue it, or fail it when out of attempts.

    Only safe where no other worker can be running them (the embedded topology at start-up).
    Returns (re-queued ids, failed ids).
    """
    return _settle(session, jobs_repo.jobs_in_status(session, JobStatus.running), max_attempts)


def settle_abandoned(session: Session, max_attempts: int, job_id: uuid.UUID | None = None) -> Settled:
    """Settle running jobs whose worker's lease has lapsed (all of them, or just `job_id`)."""
    return _settle(session, jobs_repo.abandoned_jobs(session, job_id), max_attempts)
