"""Retention: finished jobs are deleted, rows and stored bytes, some time after they finished.

`sweep` removes every job that succeeded, failed or was canceled before a cutoff, with its events,
items and artifacts, and its artifacts' objects in the store; a queued or running job is never touched.
It works in batches (`batch_size` jobs a transaction), so a large backlog never holds one long
transaction, and several processes may sweep at once: each batch is locked with SKIP LOCKED on
Postgres, and a job another sweeper deleted first simply counts as 0.

The order of the work, per batch, is what keeps it crash-safe:

1. One transaction deletes the jobs' artifact rows (reading their keys first) and commits. From here on
   no reader lists an artifact of these jobs, so no one is shown an artifact whose bytes go away.
2. The objects are deleted: the keys read in 1, and every key the jobs' artifacts can have
   (`artifact_key` of each item, stage and the job's format), which covers a crash between 1 and 3 and
   objects a crashed render stored without ever recording them.
3. A second transaction deletes the job rows with their events and items.

The job row is the tombstone: until step 3 commits, a crash at any point leaves the job expired and
terminal, so the next sweep picks it up again and redoes 2 and 3 (both are idempotent). Deleting the
objects first would show a still-visible job's artifacts without bytes if it crashed before the rows
went; deleting every row first would orphan the objects forever on such a crash, with nothing left to
say they exist.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from dreamforge.db.session import transaction
from dreamforge.db.tables import Job, utcnow
from dreamforge.jobs import repository as jobs_repo
from dreamforge.jobs.periodic import PeriodicTask
from dreamforge.observability import metrics
from dreamforge.storage.base import (
    CONTENT_TYPES,
    ArtifactStore,
    BatchDeletingStore,
    ImageFormat,
    artifact_key,
)

log = logging.getLogger(__name__)

# Jobs deleted per transaction.
BATCH_SIZE = 100
# The stages an item's artifacts may have (`Artifact.stage`).
_STAGES = ("final", "base")


@dataclass(frozen=True)
class SweepResult:
    """What one sweep removed: jobs (with their events, items and artifact rows) and stored objects."""

    jobs: int = 0
    objects: int = 0

    def __add__(self, other: SweepResult) -> SweepResult:
        return SweepResult(self.jobs + other.jobs, self.objects + other.objects)


@dataclass(frozen=True)
class ExpiredJob:
    """A job a sweep would delete, as `dreamforge gc --dry-run` lists it."""

    id: uuid.UUID
    status: str
    finished_at: datetime
    artifacts: int
    bytes: int


def cutoff_for(days: float, now: datetime | None = None) -> datetime:
    """The moment before which a job must have finished to be deleted, keeping `days` of them."""
    if days <= 0:
        raise ValueError("retention needs a positive number of days")
    return (now or utcnow()) - timedelta(days=days)


def expired_jobs(sessions: sessionmaker[Session], cutoff: datetime) -> list[ExpiredJob]:
    """Every job a sweep with `cutoff` would delete, oldest first; deletes nothing."""
    with sessions() as s:
        return [ExpiredJob(*row) for row in jobs_repo.expired_job_summaries(s, cutoff)]


def _possible_keys(job: Job) -> set[str]:
    """Every key the job's artifacts can have been stored under (see `worker.runner`)."""
    params: dict[str, Any] = job.params or {}
    fmt = params.get("format")
    formats = [fmt] if fmt in CONTENT_TYPES else [f.value for f in ImageFormat]
    return {
        artifact_key(job.id, index, f, stage)
        for index in range(job.count)
        for f in formats
        for stage in _STAGES
    }


def _delete_objects(store: ArtifactStore, keys: Iterable[str]) -> None:
    ordered = sorted(set(keys))
    if not ordered:
        return
    if isinstance(store, BatchDeletingStore):
        store.delete_many(ordered)
        return
    for key in ordered:
        store.delete(key)


def _sweep_batch(
    sessions: sessionmaker[Session], store: ArtifactStore, cutoff: datetime, batch_size: int
) -> tuple[SweepResult, int]:
    """One batch (see the module's docstring for the order); returns what went and how many jobs it took."""
    with transaction(sessions) as s:
        jobs = jobs_repo.lock_expired_jobs(s, cutoff, batch_size)
        ids = [job.id for job in jobs]
        if not ids:
            return SweepResult(), 0
        keys = set(jobs_repo.artifact_keys(s, ids))
        for job in jobs:
            keys |= _possible_keys(job)
        objects = jobs_repo.delete_artifacts(s, ids)
    _delete_objects(store, keys)
    with transaction(sessions) as s:
        deleted = jobs_repo.delete_expired_jobs(s, ids, cutoff)
    return SweepResult(jobs=deleted, objects=objects), len(ids)


def sweep(
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    cutoff: datetime,
    *,
    batch_size: int = BATCH_SIZE,
    stop: threading.Event | None = None,
) -> SweepResult:
    """Delete every job that finished before `cutoff`, with its rows and objects; returns what went.

    `objects` counts the artifacts whose rows listed them (keys tried only in case are not counted).
    Raises `StorageUnavailable` or a database error if a batch cannot be done; what earlier batches
    removed stays removed, and the failed batch is redone by the next sweep. Once `stop` is set, the
    sweep ends after the batch in progress.
    """
    total = SweepResult()
    while True:
        result, taken = _sweep_batch(sessions, store, cutoff, batch_size)
        total += result
        metrics.RETENTION_JOBS.inc(result.jobs)
        metrics.RETENTION_OBJECTS.inc(result.objects)
        # A short batch was the last one; a batch whose jobs all went elsewhere (another sweeper's)
        # ends this sweep rather than spin.
        if taken < batch_size or result.jobs == 0 or (stop is not None and stop.is_set()):
            return total


class RetentionSweeper(PeriodicTask):
    """A background thread that deletes expired jobs: first shortly after start, then every interval."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: ArtifactStore,
        *,
        days: float,
        interval_seconds: float,
        first_delay_seconds: float | None = None,
    ) -> None:
        if days <= 0:
            raise ValueError("retention needs a positive number of days")
        # Not at once (the process is starting), but soon: a process restarted more often than the
        # interval still sweeps.
        first = min(interval_seconds, 60.0) if first_delay_seconds is None else first_delay_seconds
        super().__init__("retention", interval_seconds, first)
        self.sessions = sessions
        self.store = store
        self.days = days
        # Totals of this process's sweeps.
        self.swept = SweepResult()
        self.sweeps = 0

    def run_once(self) -> SweepResult:
        """One sweep (the periodic task)."""
        return self.sweep_once()

    def sweep_once(self) -> SweepResult:
        """One sweep with the cutoff as of now; logged and added to the totals."""
        cutoff = cutoff_for(self.days)
        result = sweep(self.sessions, self.store, cutoff, stop=self.stopping)
        self.swept += result
        self.sweeps += 1
        log.info(
            "retention: deleted %d job(s) and %d object(s) finished before %s",
            result.jobs,
            result.objects,
            cutoff.isoformat(timespec="seconds"),
        )
        return result
