"""The reconciler: no accepted job is left stuck when workers die or the broker drops a message.

It runs in every process of the distributed topology and repeats two idempotent sweeps:
running jobs whose lease lapsed are re-queued (or failed once out of attempts), and queued
jobs that no broker message carries are sent again. Duplicate messages are harmless because
workers claim jobs atomically. A broker that lost its data (restarted without persistence, or
replaced) lost every queued job's message too: after one, every queued job is sent again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dreamforge.db.session import transaction
from dreamforge.jobs import repository as jobs_repo
from dreamforge.jobs.dispatch import BrokerUnavailable, Dispatcher
from dreamforge.jobs.lifecycle import settle_abandoned
from dreamforge.jobs.periodic import PeriodicTask

log = logging.getLogger(__name__)


class Reconciler(PeriodicTask):
    """A background thread that settles abandoned jobs and re-sends undispatched ones."""

    handled = (SQLAlchemyError, BrokerUnavailable)

    def __init__(
        self,
        sessions: sessionmaker[Session],
        dispatcher: Dispatcher,
        *,
        max_attempts: int,
        interval_seconds: float,
        broker_reset: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__("reconciler", interval_seconds)
        self.sessions = sessions
        self.dispatcher = dispatcher
        # True once per loss of the broker's data (CeleryDispatcher.broker_reset); None: no such check.
        self.broker_reset = broker_reset
        self._broker_lost = False
        self.max_attempts = max_attempts
        # The API sends a job right after accepting it; wait a little longer before resending.
        self.grace_seconds = max(10.0, 2 * interval_seconds)

    def run_once(self) -> int:
        """One sweep (the periodic task)."""
        return self.sweep()

    def sweep(self) -> int:
        """One pass of both sweeps; returns how many jobs were sent to the broker."""
        with transaction(self.sessions) as s:
            requeued, failed = settle_abandoned(s, self.max_attempts)
        if requeued or failed:
            log.warning("reconciler: %d abandoned job(s) re-queued, %d failed", len(requeued), len(failed))
        lost: list[uuid.UUID] = []
        if self.broker_reset is not None and self.broker_reset():
            # Told once per loss: kept until the database has it, should this sweep fail before.
            self._broker_lost = True
        if self._broker_lost:
            # Forgotten in the database first: if a send below fails, later sweeps still resend them.
            with transaction(self.sessions) as s:
                lost = jobs_repo.forget_dispatches(s)
            self._broker_lost = False
            if lost:
                log.warning("reconciler: broker lost its messages; re-sending %d queued job(s)", len(lost))
        with self.sessions() as s:
            pending = jobs_repo.undispatched_jobs(s, self.grace_seconds)
        pending = list(dict.fromkeys([*requeued, *lost, *pending]))
        for job_id in pending:
            self.dispatcher.dispatch(job_id)
        return len(pending)
