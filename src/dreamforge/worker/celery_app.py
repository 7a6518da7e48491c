"""The Celery worker of the distributed topology: GPU workers consume the `gpu.default` queue, webhook
workers the `webhooks` queue (`dreamforge worker --queue webhooks`: a thread pool, no GPU).

Delivery is at least once (late acks, redelivery of a lost worker's message); execution is
effectively once because `run_job` claims the job atomically in the database and does nothing
for a job that is running elsewhere or finished.

`dreamforge worker` builds the app with `create_worker_app(settings)`, handing it the settings
its flags chose (`--queue`). `celery -A dreamforge.worker.celery_app:app worker` also works and
reads `DF_*` settings; `dreamforge worker` is the supported entry point: it fixes the pool and
concurrency that one-GPU-per-process needs.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from celery import Celery, signals
from celery.worker import state as celery_worker_state
from sqlalchemy.exc import SQLAlchemyError

from dreamforge.broker.celery import TASK_NAME, WEBHOOK_TASK_NAME, make_celery
from dreamforge.config import Settings
from dreamforge.engines.base import DeviceFault
from dreamforge.jobs.state import JobStatus
from dreamforge.observability.logs import configure_logging
from dreamforge.observability.metrics import serve_metrics
from dreamforge.runtime import Runtime, build_worker_runtime
from dreamforge.webhooks.deliverer import attempt_queued
from dreamforge.worker.runner import DEVICE_FAULT_EXIT_CODE, run_job

log = logging.getLogger(__name__)

# Exit status after DF_WORKER_MAX_JOBS jobs: a planned restart (EX_TEMPFAIL), not a failure.
RECYCLE_EXIT_CODE = 75
# Seconds a worker waits before sending on a job whose claim the database refused: during an outage the
# message would otherwise circle between the workers as fast as they can fail.
RESEND_AFTER_DB_ERROR_SECONDS = 1.0


class _WorkerState:
    """The long-lived parts of this worker process, built on its first job."""

    def __init__(self, settings: Settings, celery: Celery) -> None:
        self.settings = settings
        self.celery = celery
        self.lock = threading.Lock()
        self.runtime: Runtime | None = None
        self.jobs_run = 0

    def get(self) -> Runtime:
        """The runtime, built and started on first use (migrations, storage, reconciler)."""
        with self.lock:
            if self.runtime is None:
                runtime = build_worker_runtime(self.settings, self.celery)
                runtime.start()
                self.runtime = runtime
            return self.runtime

    def run(self, job_id: str) -> str | None:
        """Run one job; a job interrupted by shutdown goes back on this worker's queue."""
        runtime = self.get()
        assert runtime.worker_context is not None
        try:
            status = run_job(runtime.worker_context, uuid.UUID(job_id))
        except SQLAlchemyError as exc:
            # Out of the job's own handling: its claim (or last bookkeeping) met the database away. The
            # message is acknowledged when this returns, and the job, marked as sent, would wait for
            # no message. Sent again it is claimed once the database is back; were it claimed after
            # all, the duplicate is a no-op and a lapsed lease brings the job back.
            log.warning("job %s: database unavailable (%s); sending the job again", job_id, exc)
            time.sleep(RESEND_AFTER_DB_ERROR_SECONDS)
            self._resend(runtime, job_id)
            return None
        except DeviceFault:
            # The job is re-queued; this process's GPU context is unusable. Send the job on, then
            # leave once this task is acknowledged, non-zero so the supervisor starts a fresh one.
            self._resend(runtime, job_id)
            celery_worker_state.should_stop = DEVICE_FAULT_EXIT_CODE
            return JobStatus.queued.value
        if status is JobStatus.queued:
            self._resend(runtime, job_id)
        self.jobs_run += 1
        limit = self.settings.worker_max_jobs
        if limit and self.jobs_run >= limit:
            log.info("ran %d job(s) (DF_WORKER_MAX_JOBS); exiting for a fresh process", self.jobs_run)
            celery_worker_state.should_stop = RECYCLE_EXIT_CODE
        return status.value if status else None

    def deliver(self, delivery_id: str) -> str | None:
        """Make one webhook delivery's due attempt (webhook queue)."""
        runtime = self.get()
        assert runtime.deliveries is not None and runtime.webhook_queue is not None
        outcome = attempt_queued(runtime.deliveries, runtime.webhook_queue, uuid.UUID(delivery_id))
        return outcome.status if outcome else None

    @staticmethod
    def _resend(runtime: Runtime, job_id: str) -> None:
        try:
            runtime.dispatcher.dispatch(uuid.UUID(job_id))
        except Exception as exc:
            # The reconciler sends queued jobs no message carries; nothing is lost.
            log.warning("job %s re-queued but not re-sent (%s); the reconciler will", job_id, exc)

    def on_init(self, **_: Any) -> None:
        # No HTTP server here: Prometheus scrapes this process on its own port (DF_METRICS_PORT).
        # With the solo pool, jobs run in this very process, so its registry holds their metrics.
        serve_metrics(self.settings.metrics_port)

    def on_ready(self, **_: Any) -> None:
        # Build (and migrate) before the first job, so start-up problems show at once in the log;
        # if the database is down now, the first job tries again.
        self.get()

    def on_shutting_down(self, **_: Any) -> None:
        # Runs in the signal handler: the job in progress stops at its next step and is re-queued.
        if self.runtime is not None and self.runtime.worker_context is not None:
            self.runtime.worker_context.stopping.set()

    def on_shutdown(self, **_: Any) -> None:
        if self.runtime is not None:
            self.runtime.close()


def create_worker_app(settings: Settings) -> Celery:
    """The worker's Celery app for `settings`: the job task registered, lifecycle signals connected.

    Build one per process: the signals are process-wide.
    """
    if not settings.distributed:
        raise RuntimeError("a Celery worker needs DF_REDIS_URL (the embedded topology runs its own worker)")
    celery = make_celery(settings)
    state = _WorkerState(settings, celery)

    def run_job_task(_task: Any, job_id: str) -> str | None:
        return state.run(job_id)

    def deliver_webhook_task(_task: Any, delivery_id: str) -> str | None:
        return state.deliver(delivery_id)

    # Not shared: a shared task would also be registered on every other app of the process.
    celery.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, shared=False)(
        run_job_task
    )
    # Late acks here too: a worker that dies mid-attempt leaves the message (and the lapsing claim).
    celery.task(name=WEBHOOK_TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, shared=False)(
        deliver_webhook_task
    )
    # Strong references: Celery keeps signal receivers weakly by default.
    signals.worker_init.connect(state.on_init, weak=False)
    signals.worker_ready.connect(state.on_ready, weak=False)
    if settings.log_format == "json":
        # A receiver of setup_logging tells Celery to leave logging alone (its own handlers and the
        # stdout redirect would write text); celeryd_init runs early enough to drop the text banner.
        signals.setup_logging.connect(_json_logging, weak=False)
        signals.celeryd_init.connect(_quiet_banner, weak=False)
        signals.worker_ready.connect(_quiet_shutdown_notices, weak=False)
        signals.worker_shutting_down.connect(_log_shutdown, weak=False)
    signals.worker_shutting_down.connect(state.on_shutting_down, weak=False)
    signals.worker_shutdown.connect(state.on_shutdown, weak=False)
    return celery


def _json_logging(loglevel: int | None = None, **_: Any) -> None:
    # `dreamforge worker` configured JSON logging already (then this does nothing); `celery -A` did not.
    configure_logging(loglevel or logging.INFO, "json")


def _quiet_banner(instance: Any = None, **_: Any) -> None:
    if instance is not None:
        instance.quiet = True


def _quiet_shutdown_notices(sender: Any = None, **_: Any) -> None:
    # Celery's SIGTERM/SIGQUIT handlers print "worker: Warm shutdown (MainProcess)" straight to
    # stdout; the same handlers again (installed by now), without the print: `_log_shutdown` logs it.
    from celery.apps import worker as celery_worker

    controller = getattr(sender, "controller", None)
    celery_worker.install_worker_term_handler(controller, verbose=False)
    celery_worker.install_worker_term_hard_handler(controller, verbose=False)


def _log_shutdown(sig: str = "", how: str = "", **_: Any) -> None:
    log.info("worker: %s shutdown (%s)", how, sig)


def run_worker(settings: Settings, argv: list[str]) -> int:
    """Run `celery worker` with `argv` until it stops; returns the exit status it asked for."""
    create_worker_app(settings).worker_main(argv)
    # Celery's programmatic entry drops the status its shutdown carried; it is kept in this flag.
    return int(celery_worker_state.should_stop or 0)


def __getattr__(name: str) -> Celery:
    # `celery -A dreamforge.worker.celery_app:app`: built on first access, never on import.
    if name == "app":
        app = create_worker_app(Settings())
        globals()["app"] = app
        return app
    raise AttributeError(name)
