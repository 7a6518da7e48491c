"""The embedded queue: one thread in the API process runs local (GPU) jobs in order, one at a time;
remote providers' jobs, which wait on the network, run beside them on threads of their own."""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Collection

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
    """A `Dispatcher` that runs jobs on background threads of this process: one lane for the GPU, one
    (of `remote_threads` threads) for `remote_providers`' jobs, so a slow remote API never holds a render."""

    def __init__(
        self, ctx: WorkerContext, *, remote_providers: Collection[str] = (), remote_threads: int = 1
    ) -> None:
        self.ctx = ctx
        self.remote_providers = frozenset(remote_providers)
        self._local: queue.Queue[uuid.UUID | None] = queue.Queue()
        self._remote: queue.Queue[uuid.UUID | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._loop, args=(self._local,), name="dreamforge-worker", daemon=True)
        ]
        if self.remote_providers:
            self._threads += [
                threading.Thread(
                    target=self._loop, args=(self._remote,), name=f"dreamforge-remote-{n}", daemon=True
                )
                for n in range(remote_threads)
            ]

    def start(self) -> None:
        """Settle jobs a previous process left running, queue every queued job, start the threads."""
        # The render thread shares the interpreter lock with the API's event loop; a short switch
        # interval hands it back within 0.5 ms instead of 5 ms when many streams keep the loop busy.
        sys.setswitchinterval(RENDER_SWITCH_INTERVAL_SECONDS)
        with transaction(self.ctx.sessions) as s:
            requeued, failed = settle_interrupted(s, self.ctx.settings.max_attempts)
            pending = [(job.id, job.provider) for job in jobs_repo.jobs_in_status(s, JobStatus.queued)]
        if requeued or failed:
            log.warning(
                "recovered %d interrupted job(s): %d re-queued, %d failed",
                len(requeued) + len(failed),
                len(requeued),
                len(failed),
            )
        for job_id, provider in pending:
            self._lane(provider).put(job_id)
        for thread in self._threads:
            thread.start()

    def dispatch(self, job_id: uuid.UUID) -> None:
        """Queue a committed job on its provider's lane."""
        provider = None
        if self.remote_providers:
            with self.ctx.sessions() as s:
                job = jobs_repo.get_job(s, job_id)
                provider = job.provider if job is not None else None
        self._lane(provider).put(job_id)

    def _lane(self, provider: str | None) -> queue.Queue[uuid.UUID | None]:
        return self._remote if provider in self.remote_providers else self._local

    def stop(self, timeout: float = 5.0) -> None:
        """Stop: running jobs are interrupted at their next step and re-queued for the next start."""
        self.ctx.stopping.set()
        for thread in self._threads:
            (self._remote if thread.name.startswith("dreamforge-remote") else self._local).put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _loop(self, lane: queue.Queue[uuid.UUID | None]) -> None:
        while True:
            job_id = lane.get()
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
