"""`run_job`: the one path from a queued job to a terminal one, used by every kind of worker.

Items render in batches of up to `DF_MAX_BATCH` (one engine call each; one when the job asks to be
batch-invariant). Each step commits before the next begins, so a crash at any point leaves a state
the next attempt can continue from: items with a stored artifact are not rendered again, and an
item's seed is recorded before rendering so a re-run draws the same image.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from dreamforge.db.session import transaction
from dreamforge.db.tables import Artifact, Job, utcnow
from dreamforge.engines.base import DeviceFault, Engine, EngineError, ModelSpec, OutOfMemory, RenderRequest
from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError
from dreamforge.events.kinds import EventKind
from dreamforge.events.repository import add_event
from dreamforge.jobs import repository as jobs_repo
from dreamforge.jobs.lifecycle import finish_job, log_event, requeue_job, settle_abandoned
from dreamforge.jobs.seeds import SeedStrategy, first_seed, item_seed
from dreamforge.jobs.state import DENOISE_WEIGHT, JobStatus
from dreamforge.recipe.compose import compose
from dreamforge.recipe.embed import encode_image
from dreamforge.registry import repository as models_repo
from dreamforge.storage.base import CONTENT_TYPES, artifact_key
from dreamforge.worker.context import WorkerContext

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

# Progress events are throttled: enough for a smooth bar, few enough to keep the event log small.
PROGRESS_INTERVAL_SECONDS = 0.1
# A running job reads its cancel flag from the database at most this often, from the step callback:
# one indexed read per interval, in every topology, with no channel that could drop the request.
CANCEL_POLL_SECONDS = 0.1
# Exit status of a worker process whose GPU failed beyond repair (EX_SOFTWARE): restart me.
DEVICE_FAULT_EXIT_CODE = 70


class JobInterrupted(Exception):
    """The worker is shutting down; the job goes back to the queue without using up an attempt."""


class JobLost(Exception):
    """The job's lease lapsed and it was settled elsewhere; this worker must not touch it again."""


class JobCanceled(Exception):
    """A cancel was requested; the job ends `canceled`, keeping the items already stored."""


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


@dataclass
class _Item:
    """One pending item of the job and the seed it renders with."""

    index: int
    seed: int


class _JobRun:
    """The rendering part of one attempt at one job: items in batches, each batch one engine call."""

    def __init__(self, ctx: WorkerContext, job_id: uuid.UUID, lease: LeaseKeeper) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.lease = lease
        self.deadline = time.monotonic() + ctx.settings.job_time_limit_seconds
        self.params: dict[str, Any] = {}
        self.count = 0
        self.model_info: dict[str, Any] = {}
        self.runtime: dict[str, str] = {}
        self._cancel_checked = 0.0

    def check(self) -> None:
        """Stop between steps if the job was canceled or taken away, the worker stops, or time ran out."""
        self._check_worker()
        now = time.monotonic()
        if now - self._cancel_checked >= CANCEL_POLL_SECONDS:
            self._cancel_checked = now
            with self.ctx.sessions() as s:
                if jobs_repo.cancel_requested(s, self.job_id):
                    raise JobCanceled

    def _check_worker(self) -> None:
        """The checks that need no database: lease lost, worker stopping, time limit."""
        if self.lease.lost.is_set():
            raise JobLost
        if self.ctx.stopping.is_set():
            raise JobInterrupted
        if time.monotonic() > self.deadline:
            raise EngineError(
                ErrorCode.time_limit_exceeded,
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
                raise EngineError(ErrorCode.model_unavailable, "the job's model is no longer installed")
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
            recorded = {i.item_index: i.seed for i in jobs_repo.get_items(s, self.job_id)}
            done = {a.item_index for a in jobs_repo.list_artifacts(s, self.job_id)}

        engine = self.ctx.engine_for(provider)
        seconds = engine.load(spec)
        if seconds:
            with transaction(self.ctx.sessions) as s:
                log_event(s, self.job_id, "info", f"model {spec.name!r} loaded in {seconds:.2f}s")
        self.runtime = engine.runtime_info()

        pending = [i for i in sorted(recorded) if i not in done]
        batch_size = 1 if self.params.get("batch_invariant") else self.ctx.settings.max_batch
        request = RenderRequest(
            prompt=self.params["prompt"],
            negative_prompt=self.params.get("negative_prompt"),
            width=self.params["width"],
            height=self.params["height"],
            steps=self.params["steps"],
            guidance=self.params["guidance"],
            scheduler=self.params["scheduler"],
        )
        while pending:
            self.check()
            batch = self._start_batch(pending[:batch_size], recorded)
            try:
                images = self._render_batch(engine, spec, request, batch, done_before=len(done))
            except OutOfMemory as exc:
                if len(batch) == 1:
                    raise OutOfMemory(
                        f"the GPU ran out of memory rendering one {request.width}x{request.height} image "
                        f"({exc.message}); lower width and height, or set DF_CPU_OFFLOAD=true"
                    ) from None
                batch_size = max(1, len(batch) // 2)
                self._retry_smaller(batch, batch_size, exc)
                continue
            for position, (item, image) in enumerate(zip(batch, images, strict=True)):
                self._store_item(item, image, batch_size=len(batch), position=position)
                done.add(item.index)
            pending = pending[len(batch) :]

    def _start_batch(self, indexes: list[int], recorded: dict[int, int | None]) -> list[_Item]:
        """Draw (or reuse) the batch's seeds and record them before anything renders."""
        strategy = SeedStrategy(self.params.get("seed_strategy", SeedStrategy.random))
        # Item 0 renders in the first batch, so its seed is recorded before any other item needs it.
        first = recorded.get(0)
        if first is None:
            first = recorded[0] = first_seed(self.params.get("seed"))
        batch = []
        for index in indexes:
            seed = recorded.get(index)
            if seed is None:
                seed = recorded[index] = item_seed(index, strategy, first)
            batch.append(_Item(index, seed))
        with transaction(self.ctx.sessions) as s:
            for item in batch:
                row = jobs_repo.get_item(s, self.job_id, item.index)
                assert row is not None
                row.seed = item.seed
                row.status = "running"
                log_event(
                    s, self.job_id, "info", f"item {item.index}: rendering with seed {item.seed}", item.index
                )
        return batch

    def _retry_smaller(self, batch: list[_Item], batch_size: int, exc: OutOfMemory) -> None:
        with transaction(self.ctx.sessions) as s:
            for item in batch:
                row = jobs_repo.get_item(s, self.job_id, item.index)
                if row is not None:
                    row.status, row.progress = "pending", 0.0
            log_event(
                s,
                self.job_id,
                "warning",
                f"GPU out of memory with {len(batch)} images in one call ({exc.message}); "
                f"retrying the remaining items {batch_size} at a time (slower, same images)",
            )

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

    def _render_batch(
        self, engine: Engine, spec: ModelSpec, request: RenderRequest, batch: list[_Item], *, done_before: int
    ) -> list[Image.Image]:
        last_emit = 0.0

        def on_step(step: int, total: int) -> None:
            nonlocal last_emit
            self._check_worker()
            now = time.monotonic()
            if not (1 < step < total and now - last_emit < PROGRESS_INTERVAL_SECONDS):
                last_emit = now
                item_progress = DENOISE_WEIGHT * step / max(total, 1)
                overall = (done_before + item_progress * len(batch)) / self.count
                with transaction(self.ctx.sessions) as s:
                    for item in batch:
                        row = jobs_repo.get_item(s, self.job_id, item.index)
                        if row is not None:
                            row.progress = item_progress
                        self._progress_event(s, item.index, item_progress, step, total, overall)
                    # The cancel flag rides on the progress write: one round trip per interval, not two.
                    canceled = jobs_repo.cancel_requested(s, self.job_id)
                self._cancel_checked = now
                if canceled:
                    raise JobCanceled
            else:
                self.check()

        return engine.render(spec, request, [item.seed for item in batch], on_step)

    def _store_item(self, item: _Item, image: Image.Image, *, batch_size: int, position: int) -> None:
        """Encode, store, then record one item: announced as soon as its batch is done."""
        params = self.params
        fmt = params["format"]
        if params.get("embed_metadata", True):
            infotext, recipe = compose(
                job_id=self.job_id,
                item_index=item.index,
                count=self.count,
                params=params,
                seed=item.seed,
                model=self.model_info,
                runtime=self.runtime,
                batch={"size": batch_size, "position": position},
            )
            data = encode_image(image, fmt, infotext, recipe)
        else:
            data = encode_image(image, fmt)
        key = artifact_key(self.job_id, item.index, fmt)
        content_type = CONTENT_TYPES[fmt]
        # Store first, then record: an artifact row always points at bytes that exist.
        self.ctx.store.put(key, data, content_type)
        with transaction(self.ctx.sessions) as s:
            job = self.owned_job(s)
            artifact = jobs_repo.get_artifact_for_item(s, self.job_id, item.index)
            if artifact is None:
                artifact = Artifact(
                    job_id=self.job_id,
                    item_index=item.index,
                    format=fmt,
                    content_type=content_type,
                    width=image.width,
                    height=image.height,
                    seed=item.seed,
                    s3_key=key,
                    size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                )
                s.add(artifact)
                s.flush()
            row = jobs_repo.get_item(s, self.job_id, item.index)
            assert row is not None
            row.status = "succeeded"
            row.progress = 1.0
            job.completed = len(jobs_repo.list_artifacts(s, self.job_id))
            job.updated_at = utcnow()
            add_event(s, self.job_id, EventKind.artifact, {"artifact_id": str(artifact.id)}, item.index)
            steps = params["steps"]
            self._progress_event(s, item.index, 1.0, steps, steps, job.completed / self.count)
            log_event(
                s, self.job_id, "info", f"item {item.index}: stored {key} ({len(data)} bytes)", item.index
            )


def run_job(ctx: WorkerContext, job_id: uuid.UUID) -> JobStatus | None:
    """Claim `job_id` and run it to `succeeded`, `failed` or `canceled` (`queued` again if the
    worker is stopping).

    Returns None if the job was not ours to run (running elsewhere, finished, missing, or lost).
    Raises `DeviceFault` after re-queueing the job when the device is lost: the process must exit.
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
    code: ErrorCode | None = None
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
        except DeviceFault as exc:
            log.critical("job %s: %s; this worker process must restart", job_id, exc.message)
            try:
                with transaction(ctx.sessions) as s:
                    job = run.owned_job(s)
                    if job.attempts >= settings.max_attempts:
                        # A job that breaks every GPU it meets must not loop through the workers.
                        finish_job(s, job, JobStatus.failed, exc.code, exc.message)
                    else:
                        requeue_job(s, job, f"the GPU failed ({exc.message}); moving to a fresh worker")
            except JobLost:
                pass
            raise
        except JobCanceled:
            status = JobStatus.canceled
        except DreamForgeError as exc:
            status, code, message = JobStatus.failed, exc.code, exc.message
        except Exception as exc:
            log.exception("job %s crashed", job_id)
            status, code, message = JobStatus.failed, ErrorCode.engine_error, f"{type(exc).__name__}: {exc}"
        try:
            with transaction(ctx.sessions) as s:
                finish_job(s, run.owned_job(s), status, code, message)
        except JobLost:
            return None
    return status
