"""The Celery app of the distributed topology: GPU workers consume the `gpu.default` queue.

Delivery is at least once (late acks, redelivery of a lost worker's message); execution is
effectively once because `run_job` claims the job atomically in the database and does nothing
for a job that is running elsewhere or finished.

`celery -A dreamforge.worker.celery_app:app worker` works, but `dreamforge worker` is the
supported entry point: it fixes the pool and concurrency that one-GPU-per-process needs.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from celery import Celery, signals

from dreamforge.config import Settings

log = logging.getLogger(__name__)

TASK_NAME = "dreamforge.run_job"


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
    """A Celery app configured from `settings` (the API publishes with it, workers consume)."""
    celery = Celery("dreamforge")
    celery.conf.update(celery_config(settings))
    celery.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)(_run_job_task)
    return celery


class _WorkerState:
    """The long-lived parts of this worker process, built on its first job."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runtime: Any = None

    def get(self) -> Any:
        """The runtime, built and started on first use (migrations, storage, reconciler)."""
        from dreamforge.runtime import build_worker_runtime

        with self.lock:
            if self.runtime is None:
                runtime = build_worker_runtime(Settings(), app)
                runtime.start()
                self.runtime = runtime
            return self.runtime


worker_state = _WorkerState()


def _run_job_task(task: Any, job_id: str) -> str | None:
    """Run one job; a job interrupted by shutdown goes back on the queue."""
    from dreamforge.api.schemas import JobStatus
    from dreamforge.worker.runner import run_job

    runtime = worker_state.get()
    status = run_job(runtime.worker_context, uuid.UUID(job_id))
    if status is JobStatus.queued:
        try:
            runtime.dispatcher.dispatch(uuid.UUID(job_id))
        except Exception as exc:
            # The API's reconciler sends queued jobs no message carries; nothing is lost.
            log.warning("job %s re-queued but not re-sent (%s); the reconciler will", job_id, exc)
    return status.value if status else None


def _on_ready(**_: Any) -> None:
    # Build (and migrate) before the first job, so start-up problems show at once in the log;
    # if the database is down now, the first job tries again.
    worker_state.get()


def _on_worker_shutdown(**_: Any) -> None:
    runtime = worker_state.runtime
    if runtime is not None:
        runtime.close()


def _on_shutdown(**_: Any) -> None:
    # Runs in the signal handler: the job in progress stops at its next step and is re-queued.
    runtime = worker_state.runtime
    if runtime is not None:
        runtime.worker_context.stopping.set()


# Strong references: Celery keeps signal receivers weakly by default.
signals.worker_ready.connect(_on_ready, weak=False)
signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
signals.worker_shutting_down.connect(_on_shutdown, weak=False)

app = make_celery(Settings())
