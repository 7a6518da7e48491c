"""Handing committed jobs to workers."""

from __future__ import annotations

import logging
import uuid
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dreamforge.db.session import transaction
from dreamforge.jobs import repository as jobs_repo

log = logging.getLogger(__name__)


class BrokerUnavailable(Exception):
    """The message broker did not accept the job's message."""


class Dispatcher(Protocol):
    """Delivers a committed job to some worker; called only after the job row has committed."""

    def dispatch(self, job_id: uuid.UUID) -> None:
        """Queue `job_id` for execution; raises `BrokerUnavailable` if it could not be sent."""


class CeleryDispatcher:
    """Sends jobs to the Celery workers' queue, then marks them dispatched."""

    def __init__(self, celery: Any, sessions: sessionmaker[Session], queue: str) -> None:
        self.celery = celery
        self.sessions = sessions
        self.queue = queue

    def dispatch(self, job_id: uuid.UUID) -> None:
        """Publish the job's message; the mark afterwards only spares the reconciler a resend."""
        from kombu.exceptions import OperationalError
        from redis.exceptions import RedisError

        from dreamforge.worker.celery_app import TASK_NAME

        try:
            self.celery.send_task(TASK_NAME, args=[str(job_id)], queue=self.queue)
        except (OperationalError, RedisError, OSError) as exc:
            raise BrokerUnavailable(f"the job queue is unreachable: {exc}") from exc
        try:
            with transaction(self.sessions) as s:
                jobs_repo.mark_dispatched(s, job_id)
        except SQLAlchemyError as exc:
            # Unmarked, the reconciler sends it again later: a duplicate message is a no-op.
            log.warning("job %s sent but not marked dispatched: %s", job_id, exc)
