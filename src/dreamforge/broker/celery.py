"""Celery on Redis, below both sides: the task names and configuration, and the publishers.

API processes only publish (by task name); `worker.celery_app` registers the task that runs jobs.
Neither imports the other, so an API process never builds a worker or connects its signals.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from datetime import timedelta
from queue import Queue
from typing import Any

from celery import Celery
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dreamforge.config import Settings
from dreamforge.db.session import transaction
from dreamforge.db.tables import utcnow
from dreamforge.jobs import repository as jobs_repo
from dreamforge.jobs.dispatch import BrokerUnavailable
from dreamforge.webhooks import repository as webhooks_repo

log = logging.getLogger(__name__)

# The task of the GPU queues: run the job whose id is its only argument.
TASK_NAME = "dreamforge.run_job"
# The task of the webhook queue: make the due attempt of the delivery whose id is its only argument.
WEBHOOK_TASK_NAME = "dreamforge.deliver_webhook"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for at-least-once delivery of long GPU jobs."""
    return {
        "broker_url": settings.redis_url,
        "task_default_queue": settings.queue,
        # Ack after the job ends, so a worker that dies mid-job leaves its message to redeliver.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One job at a time per GPU process; prefetching would strand jobs behind a long one.
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "broker_transport_options": {
            # Longer than any job may run: a healthy job is never handed to a second worker.
            "visibility_timeout": settings.visibility_timeout_seconds,
            # Scan for messages of dead workers every 10 s instead of kombu's ~100 s default.
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
            # A vanished broker must fail a publish quickly (the API answers 503), not hang it.
            "socket_connect_timeout": 3,
            "socket_timeout": 5,
        },
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from `settings`, with no tasks: enough to publish by name."""
    celery = Celery("dreamforge")
    celery.conf.update(celery_config(settings))
    return celery


# A key the broker keeps exactly as long as it keeps the queue's messages (same database). Missing
# means the broker restarted empty (no persistence) or was replaced: every message sent before is gone.
BROKER_MARK_KEY = "dreamforge:broker-mark:{queue}"


class CeleryDispatcher:
    """A `Dispatcher` that sends jobs to the Celery workers' queue, then marks them dispatched."""

    def __init__(
        self,
        celery: Celery,
        sessions: sessionmaker[Session],
        queue: str,
        routes: Mapping[str, str] | None = None,
    ) -> None:
        self.celery = celery
        self.sessions = sessions
        self.queue = queue
        # Provider -> queue, for providers whose jobs are not the GPU queue's (remote APIs).
        self.routes = dict(routes or {})
        self._redis: Any = None

    def broker_reset(self) -> bool:
        """True if the broker holds none of the messages sent before: it lost its data (or is new).

        Sets the queue's mark if it is missing, atomically, so exactly one caller learns of each loss.
        """
        import redis

        try:
            if self._redis is None:
                self._redis = redis.Redis.from_url(
                    str(self.celery.conf.broker_url), socket_connect_timeout=3, socket_timeout=5
                )
            return bool(self._redis.set(BROKER_MARK_KEY.format(queue=self.queue), "1", nx=True))
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable(f"the job queue is unreachable: {exc}") from exc

    def queue_of(self, job_id: uuid.UUID) -> str:
        """The queue of the job's provider (one read, only when some provider has a queue of its own)."""
        if not self.routes:
            return self.queue
        with self.sessions() as s:
            job = jobs_repo.get_job(s, job_id)
        return self.routes.get(job.provider, self.queue) if job is not None else self.queue

    def dispatch(self, job_id: uuid.UUID) -> None:
        """Publish the job's message; the mark afterwards only spares the reconciler a resend."""
        from kombu.exceptions import OperationalError
        from redis.exceptions import RedisError

        queue = self.queue_of(job_id)
        try:
            self.celery.send_task(TASK_NAME, args=[str(job_id)], queue=queue)
        except (OperationalError, RedisError, OSError) as exc:
            raise BrokerUnavailable(f"the job queue is unreachable: {exc}") from exc
        try:
            with transaction(self.sessions) as s:
                jobs_repo.mark_dispatched(s, job_id)
        except SQLAlchemyError as exc:
            # Unmarked, the reconciler sends it again later: a duplicate message is a no-op.
            log.warning("job %s sent but not marked dispatched: %s", job_id, exc)


class CeleryWebhookQueue:
    """A `DeliveryQueue` that sends deliveries to the webhook workers' queue (`DF_WEBHOOK_QUEUE`).

    `send` only hands the id to a publishing thread: it is called right after a render step commits,
    and a slow or absent broker must not hold the render loop. An id lost with the process is still
    due in the database, and a sweeper sends it.
    """

    def __init__(self, celery: Celery, sessions: sessionmaker[Session], queue: str) -> None:
        self.celery = celery
        self.sessions = sessions
        self.queue = queue
        self._outbox: Queue[tuple[uuid.UUID, float]] = Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def send(self, delivery_id: uuid.UUID, delay: float = 0.0) -> None:
        """Have the delivery published (delayed by `delay` s) from the publishing thread."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._publish_loop, name="dreamforge-webhook-publisher", daemon=True
                )
                self._thread.start()
        self._outbox.put((delivery_id, delay))

    def _publish_loop(self) -> None:
        while True:
            delivery_id, delay = self._outbox.get()
            self.publish(delivery_id, delay)

    def publish(self, delivery_id: uuid.UUID, delay: float = 0.0) -> None:
        """Publish the delivery's message now, then note that a message carries it.

        A failed publish is only logged: the delivery stays due in the database and the sweeper sends it.
        """
        from kombu.exceptions import OperationalError
        from redis.exceptions import RedisError

        try:
            self.celery.send_task(
                WEBHOOK_TASK_NAME, args=[str(delivery_id)], queue=self.queue, countdown=delay or None
            )
        except (OperationalError, RedisError, OSError) as exc:
            log.warning("webhook delivery %s not queued (%s); the sweeper will send it", delivery_id, exc)
            return
        try:
            with transaction(self.sessions) as s:
                webhooks_repo.mark_dispatched(s, delivery_id, utcnow() + timedelta(seconds=delay))
        except SQLAlchemyError as exc:
            log.warning("webhook delivery %s queued but not marked (%s)", delivery_id, exc)
