"""`run_job`: the one path from a queued job to a terminal one, used by every kind of worker.

Each step commits before the next begins, so a crash at any point leaves a state the next
attempt can continue from: items with a stored artifact are not rendered again, and an item's
seed is recorded before rendering so a re-run draws the same image.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
import uuid
from typing import Any

from sqlalchemy.orm import Session

from dreamforge.db.session import transaction
from dreamforge.db.tables import Artifact, Job, utcnow
from dreamforge.engines.base import Engine, EngineError, ModelSpec, RenderRequest
from dreamforge.errors import DreamForgeError
from dreamforge.events.kinds import EventKind
from dreamforge.events.repository import add_event
from dreamforge.jobs import repository as jobs_repo
from dreamforge.jobs.lifecycle import finish_job, log_event, requeue_job, settle_abandoned
from dreamforge.jobs.state import DENOISE_WEIGHT, JobStatus
from dreamforge.recipe.compose import compose
from dreamforge.recipe.embed import encode_image
from dreamforge.registry import repository as models_repo
from dreamforge.storage.base import CONTENT_TYPES, artifact_key
from dreamforge.worker.context import WorkerContext

log = logging.getLogger(__name__)

# Progress events are throttled: enough for a smooth bar, few enough to keep the event log small.
PROGRESS_INTERVAL_SECONDS = 0.1
SEED_RANGE = 2**32


class JobInterrupted(Exception):
    """The worker is shutting down; the job goes back to the queue without using up an attempt."""


class JobLost(Exception):
    """The job's lease lapsed and it was settled elsewhere; this worker must not touch it again."""


class LeaseKeeper:
    """Renews the job's lease from a background thread while the job runs.

    Another process treats a job whose lease has lapsed as abandoned, so a lease that cannot be
    renewed (the job was re-queued elsewhere) tells this worker to stop.
    """

    def __init__(self, ctx: WorkerContext, job_id: uuid.UUID) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)

    def _loop(self) -> None:
        lease = self.ctx.settings.lease_seconds
        while not self._done.wait(lease / 3):
            try:
                with transaction(self.ctx.sessions) as s:
                    held = jobs_repo.renew_lease(s, self.job_id, self.ctx.worker_id, lease)
            except Exception as exc:
                # A brief database outage: keep rendering and try again; the lease has slack.
                log.warning("job %s: lease not renewed (%s); retrying", self.job_id, exc)
                continue
            if not held:
                log.error("job %s: lease lost; abandoning this attempt", self.job_id)
                self.lost.set()
                return


class _JobRun:
    """The rendering part of one attempt at one job."""

    def __init__(self, ctx: WorkerContext, job_id: uuid.UUID, lease: LeaseKeeper) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.lease = lease
        self.deadline = time.monotonic() + ctx.settings.job_time_limit_seconds
        self.params: dict[str, Any] = {}
        self.count = 0
        self.model_info: dict[str, Any] = {}
        self.runtime: dict[str, str] = {}

    def check(self) -> None:
        """Stop between steps if the worker is stopping, the job was taken away or ran too long."""
        if self.lease.lost.is_set():
            raise JobLost
        if self.ctx.stopping.is_set():
            raise JobInterrupted
        if time.monotonic() > self.deadline:
            raise EngineError(
                "time_limit_exceeded",
                f"the job ran longer than {self.ctx.settings.job_time_limit_seconds}s",
            )

    def owned_job(self, s: Session) -> Job:
        """The job row, locked, if this worker still holds it; raises `JobLost` otherwise."""
        job = jobs_repo.lock_job(s, self.job_id)
        if job is None or job.status != JobStatus.running.value or job.worker_id != self.ctx.worker_id:
            raise JobLost
        return job

    def execute(self) -> None:
        with self.ctx.sessions() as s:
            job = jobs_repo.get_job(s, self.job_id)
            assert job is not None
            self.params = dict(job.params)
            self.count = job.count
            provider = job.provider
            model = models_repo.get_model(s, job.model_id) if job.model_id else None
            if model is None or not model.installed:
                raise EngineError("model_unavailable", "the job's model is no longer installed")
            self.model_info = {
                "id": model.id,
                "name": model.name,
                "sha256": model.sha256,
                "version": model.version,
                "source": model.source,
                "revision": model.revision,
                "extra": dict(model.extra or {}),
            }
            spec = ModelSpec(
                id=model.id,
                name=model.name,
                layout=model.layout,
                path=model.path,
                config_path=model.config_path,
                sha256=model.sha256,
            )
            items = [(i.item_index, i.seed) for i in jobs_repo.get_items(s, self.job_id)]
            done = {a.item_index for a in jobs_repo.list_artifacts(s, self.job_id)}

        engine = self.ctx.engine_for(provider)
        seconds = engine.load(spec)
        if seconds:
            with transaction(self.ctx.sessions) as s:
                log_event(s, self.job_id, "info", f"model {spec.name!r} loaded in {seconds:.2f}s")
        self.runtime = engine.runtime_info()

        for item_index, recorded_seed in items:
            if item_index in done:
                continue
            self.check()
            seed = self._seed_for(item_index, recorded_seed, self.params.get("seed"))
            with transaction(self.ctx.sessions) as s:
                item = jobs_repo.get_item(s, self.job_id, item_index)
                assert item is not None
                item.seed = seed
                item.status = "running"
                log_event(
                    s, self.job_id, "info", f"item {item_index}: rendering with seed {seed}", item_index
                )
            self._render_item(engine, spec, item_index, seed, done_before=len(done))
            done.add(item_index)

    @staticmethod
    def _seed_for(item_index: int, recorded: int | None, requested: int | None) -> int:
        if recorded is not None:
            return recorded
        if item_index == 0 and requested is not None:
            return requested
        return secrets.randbelow(SEED_RANGE)

    def _progress_event(
        self, s: Session, item_index: int, item_progress: float, step: int, total: int, overall: float
    ) -> None:
        add_event(
            s,
            self.job_id,
            EventKind.progress,
            {
                "item_index": item_index,
                "progress": round(item_progress, 4),
                "step": step,
                "steps": total,
                "overall": round(overall, 4),
            },
            item_index,
        )

    def _render_item(
        self, engine: Engine, spec: ModelSpec, item_index: int, seed: int, *, done_before: int
    ) -> None:
        params = self.params
        last_emit = 0.0

        def on_step(step: int, total: int) -> None:
            nonlocal last_emit
            self.check()
            now = time.monotonic()
            if 1 < step < total and now - last_emit < PROGRESS_INTERVAL_SECONDS:
                return
            last_emit = now
            item_progress = DENOISE_WEIGHT * step / max(total, 1)
            with transaction(self.ctx.sessions) as s:
                item = jobs_repo.get_item(s, self.job_id, item_index)
                if item is not None:
                    item.progress = item_progress
                overall = (done_before + item_progress) / self.count
                self._progress_event(s, item_index, item_progress, step, total, overall)

        request = RenderRequest(
            prompt=params["prompt"],
            negative_prompt=params.get("negative_prompt"),
            width=params["width"],
            height=params["height"],
            steps=params["steps"],
            guidance=params["guidance"],
            scheduler=params["scheduler"],
            seed=seed,
        )
        image = engine.render(spec, request, on_step)
        fmt = params["format"]
        if params.get("embed_metadata", True):
            infotext, recipe = compose(
                job_id=self.job_id,
                item_index=item_index,
                count=self.count,
                params=params,
                seed=seed,
                model=self.model_info,
                runtime=self.runtime,
            )
            data = encode_image(image, fmt, infotext, recipe)
        else:
            data = encode_image(image, fmt)
        key = artifact_key(self.job_id, item_index, fmt)
        content_type = CONTENT_TYPES[fmt]
        # Store first, then record: an artifact row always points at bytes that exist.
        self.ctx.store.put(key, data, content_type)
        with transaction(self.ctx.sessions) as s:
            job = self.owned_job(s)
            artifact = jobs_repo.get_artifact_for_item(s, self.job_id, item_index)
            if artifact is None:
                artifact = Artifact(
                    job_id=self.job_id,
                    item_index=item_index,
                    format=fmt,
                    content_type=content_type,
                    width=image.width,
                    height=image.height,
                    seed=seed,
                    s3_key=key,
                    size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                )
                s.add(artifact)
                s.flush()
            item = jobs_repo.get_item(s, self.job_id, item_index)
            assert item is not None
            item.status = "succeeded"
            item.progress = 1.0
            job.completed = len(jobs_repo.list_artifacts(s, self.job_id))
            job.updated_at = utcnow()
            add_event(s, self.job_id, EventKind.artifact, {"artifact_id": str(artifact.id)}, item_index)
            self._progress_event(
                s, item_index, 1.0, params["steps"], params["steps"], job.completed / self.count
            )
            log_event(
                s, self.job_id, "info", f"item {item_index}: stored {key} ({len(data)} bytes)", item_index
            )


def run_job(ctx: WorkerContext, job_id: uuid.UUID) -> JobStatus | None:
    """Claim `job_id` and run it to `succeeded` or `failed` (`queued` again if the worker is stopping).

    Returns None if the job was not ours to run (running elsewhere, finished, missing, or lost).
    """
    settings = ctx.settings
    with transaction(ctx.sessions) as s:
        # A redelivered message may find its job still marked running by a worker that died.
        settle_abandoned(s, settings.max_attempts, job_id)
    with transaction(ctx.sessions) as s:
        if not jobs_repo.claim_job(s, job_id, ctx.worker_id, settings.lease_seconds):
            job = jobs_repo.get_job(s, job_id)
            log.info("job %s not claimed (status %s)", job_id, job.status if job else "missing")
            return None
        job = jobs_repo.get_job(s, job_id)
        assert job is not None
        s.refresh(job)
        attempts = job.attempts
        add_event(s, job_id, EventKind.status, {"status": JobStatus.running.value})
        log_event(
            s, job_id, "info", f"started on {ctx.worker_id} (attempt {attempts} of {settings.max_attempts})"
        )

    status = JobStatus.succeeded
    code: str | None = None
    message: str | None = None
    with LeaseKeeper(ctx, job_id) as lease:
        run = _JobRun(ctx, job_id, lease)
        try:
            run.execute()
        except JobLost:
            return None
        except JobInterrupted:
            try:
                with transaction(ctx.sessions) as s:
                    requeue_job(s, run.owned_job(s), "the worker is shutting down", attempt_used=False)
            except JobLost:
                return None
            return JobStatus.queued
        except DreamForgeError as exc:
            status, code, message = JobStatus.failed, exc.code, exc.message
        except Exception as exc:
            log.exception("job %s crashed", job_id)
            status, code, message = JobStatus.failed, "engine_error", f"{type(exc).__name__}: {exc}"
        try:
            with transaction(ctx.sessions) as s:
                finish_job(s, run.owned_job(s), status, code, message)
        except JobLost:
            return None
    return status
