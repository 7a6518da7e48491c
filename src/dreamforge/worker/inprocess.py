"""The embedded queue: one thread in the API process runs jobs in order, one at a time."""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import uuid

from dreamforge.db.session import transaction
from dreamforge.engines.base import DeviceFault
from dreamforge.jobs import repository as jobs_repo
from dreamforge.jobs.lifecycle import settle_interrupted
from dreamforge.jobs.state import JobStatus
from dreamforge.worker.context import WorkerContext
from dreamforge.worker.runner import DEVICE_FAULT_EXIT_CODE, run_job

log = logging.getLogger(__name__)

RENDER_SWITCH_INTERVAL_SECONDS = 0.0005


class InProcessRunner:
    """A `Dispatcher` that runs jobs on a background thread of this process."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self._queue: queue.Queue[uuid.UUID | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="dreamforge-worker", daemon=True)

    def start(self) -> None:
        """Settle jobs a previous process left running, queue every queued job, start the thread."""
        # The render thread shares the interpreter lock with the API's event loop; a short switch
        # interval hands it back within 0.5 ms instead of 5 ms when many streams keep the loop busy.
        sys.setswitchinterval(RENDER_SWITCH_INTERVAL_SECONDS)
        with transaction(self.ctx.sessions) as s:
            requeued, failed = settle_interrupted(s, self.ctx.settings.max_attempts)
            pending = [job.id for job in jobs_repo.jobs_in_status(s, JobStatus.queued)]
        if requeued or failed:
            log.warning(
                "recovered %d interrupted job(s): %d re-queued, %d failed",
                len(requeued) + len(failed),
                len(requeued),
                len(failed),
            )
        for job_id in pending:
            self._queue.put(job_id)
        self._thread.start()

    def dispatch(self, job_id: uuid.UUID) -> None:
        """Queue a committed job."""
        self._queue.put(job_id)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop: the running job is interrupted at its next step and re-queued for the next start."""
        self.ctx.stopping.set()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None or self.ctx.stopping.is_set():
                return
            try:
                run_job(self.ctx, job_id)
            except DeviceFault:
                # The job is re-queued and the next start runs it; this process's GPU is unusable.
                log.critical("the GPU failed beyond repair; exiting so the supervisor restarts the service")
                os._exit(DEVICE_FAULT_EXIT_CODE)
            except Exception:
                # run_job settles engine failures itself; this is the database being unreachable.
                log.exception("job %s could not be run", job_id)
