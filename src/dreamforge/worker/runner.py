"""`run_job`: the one path from a queued job to a terminal one, used by every kind of worker.

Items render in batches of up to `DF_MAX_BATCH` (one engine call each; one when the job asks to be
batch-invariant). Then each item of the batch runs the job's later stages (upscale, refine) and is
stored. Each step commits before the next begins, so a crash at any point leaves a state the next
attempt can continue from: items with a stored artifact are not rendered again, an item caught
between its stages is redone from its generation, and an item's seed is recorded before rendering
so a re-run draws the same image.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from dreamforge.db.session import transaction
from dreamforge.db.tables import Artifact, Job, Model, utcnow
from dreamforge.engines.base import (
    DeviceFault,
    Engine,
    EngineError,
    ModelSpec,
    OutOfMemory,
    RefineRequest,
    RenderRequest,
    StepCallback,
)
from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError
from dreamforge.events.kinds import EventKind
from dreamforge.events.repository import add_event
from dreamforge.jobs import repository as jobs_repo
from dreamforge.jobs.lifecycle import finish_job, log_event, requeue_job, settle_abandoned
from dreamforge.jobs.seeds import SeedStrategy, first_seed, item_seed
from dreamforge.jobs.stages import DENOISE, STORE, StagePlan, stage_plan, upscale_params
from dreamforge.jobs.state import JobStatus
from dreamforge.observability import metrics
from dreamforge.observability.context import item_context, job_context, job_id_var
from dreamforge.recipe.compose import compose, compose_remote
from dreamforge.recipe.embed import encode_image
from dreamforge.registry import repository as models_repo
from dreamforge.registry.hashing import autov2
from dreamforge.registry.install import REMOTE_KIND
from dreamforge.storage.base import CONTENT_TYPES, artifact_key
from dreamforge.webhooks.outbox import WebhookEvent, stage_delivery
from dreamforge.worker.context import WorkerContext
from dreamforge.worker.progress import ProgressWriter, StepReport
from dreamforge.worker.stages import ItemStage, RefineStage, UpscaleStage, upscale_record

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

# Progress events are throttled: enough for a smooth bar (4 a second, plus each call's first and last
# step), few enough to keep the event log small. Each is a transaction and a wake-up of every stream,
# which on a CPU-bound box take cores from the render itself (bench/serving_overhead.py).
PROGRESS_INTERVAL_SECONDS = 0.25
# A running job's progress writer reads its cancel flag from the database this often between writes:
# one indexed read per interval, in every topology, with no channel that could drop the request. The
# step callback only looks at the flag the writer sets, so no step waits on the database.
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
        # A new thread starts with an empty context: tag this one's log lines with the job too.
        job_id_var.set(str(self.job_id))
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
class JobTimings:
    """Wall-clock milliseconds of one attempt's phases (`metrics.JOB_PHASES`), logged at its end.

    `total` runs from the attempt's start to its final transaction; `queue_wait` (created to claimed)
    comes before it. `commits` is the time in the attempt's transactions after the claim, taken out
    of the phase they happened in (progress writes out of `denoise`), so no two phases overlap and
    what `total` holds beyond their sum is the runner's own bookkeeping.
    """

    started: float = field(default_factory=time.perf_counter)
    ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(metrics.JOB_PHASES, 0.0))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the block's wall-clock time to `name`, less the commits made inside it."""
        started, commits = time.perf_counter(), self.ms["commits"]
        try:
            yield
        finally:
            inner = self.ms["commits"] - commits if name != "commits" else 0.0
            self.ms[name] += (time.perf_counter() - started) * 1000 - inner

    @contextmanager
    def transaction(
        self, sessions: sessionmaker[Session], before: Callable[[], None] | None = None
    ) -> Iterator[Session]:
        """`db.session.transaction` after `before()`, their time counted in `commits`."""
        with self.phase("commits"):
            if before is not None:
                before()
            with transaction(sessions) as s:
                yield s

    def stop(self) -> None:
        """Close `total` at the current time."""
        self.ms["total"] = (time.perf_counter() - self.started) * 1000

    def line(self) -> str:
        """The job's log line: every phase, in `metrics.JOB_PHASES` order."""
        return "timings (ms): " + " ".join(f"{name}={self.ms[name]:.1f}" for name in metrics.JOB_PHASES)

    def observe(self) -> None:
        """Record every phase in `metrics.JOB_PHASE_SECONDS`."""
        for name, value in self.ms.items():
            metrics.JOB_PHASE_SECONDS.labels(name).observe(value / 1000)


@dataclass
class _Item:
    """One pending item of the job and the seed it renders with."""

    index: int
    seed: int


class _JobRun:
    """The rendering part of one attempt at one job: items in batches, each batch one engine call."""

    def __init__(
        self, ctx: WorkerContext, job_id: uuid.UUID, lease: LeaseKeeper, timings: JobTimings
    ) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.lease = lease
        self.timings = timings
        self.deadline = time.monotonic() + ctx.settings.job_time_limit_seconds
        self.params: dict[str, Any] = {}
        self.count = 0
        self.model_info: dict[str, Any] = {}
        self.runtime: dict[str, str] = {}
        self.plan: StagePlan = stage_plan({})
        # Each item's progress (0-1), kept here so `overall` needs no query.
        self.progress: dict[int, float] = {}
        # The job's stages after generation, in order, and the recipe's record of them.
        self.stages: list[ItemStage] = []
        self.upscaler_info: dict[str, Any] = {}
        self.upscaler_runtime: dict[str, str] = {}
        # Started by `execute`: writes step progress off the render thread.
        self.writer: ProgressWriter | None = None

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        """A transaction of this run, once the progress reported so far is written (events in order)."""
        flush = self.writer.flush if self.writer is not None else None
        with self.timings.transaction(self.ctx.sessions, before=flush) as s:
            yield s

    def check(self) -> None:
        """Stop between steps if the job was canceled or taken away, the worker stops, or time ran out."""
        self._check_worker()
        assert self.writer is not None
        self.writer.raise_failure()
        if self.writer.canceled.is_set():
            raise JobCanceled

    def _read_cancel(self) -> bool:
        """The progress writer's read of the cancel flag between writes."""
        with self.ctx.sessions() as s:
            return jobs_repo.cancel_requested(s, self.job_id)

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
        self.writer = ProgressWriter(
            self._write_progress,
            name=f"progress-{self.job_id}",
            poll=self._read_cancel,
            poll_seconds=CANCEL_POLL_SECONDS,
        )
        try:
            self._execute()
        finally:
            self.writer.close()

    def _execute(self) -> None:
        upscaler_spec: ModelSpec | None = None
        with self.timings.phase("model"), self.ctx.sessions() as s:
            job = jobs_repo.get_job(s, self.job_id)
            assert job is not None
            self.params = dict(job.params)
            self.count = job.count
            provider = job.provider
            model = models_repo.get_model(s, job.model_id) if job.model_id else None
            if model is None or not model.installed:
                raise EngineError(ErrorCode.model_unavailable, "the job's model is no longer installed")
            self.model_info = _model_info(model)
            spec = _spec(model)
            upscale = upscale_params(self.params)
            if upscale is not None:
                row = models_repo.get_model(s, uuid.UUID(upscale["upscaler_model_id"]))
                if row is None or not row.installed:
                    raise EngineError(
                        ErrorCode.model_unavailable, "the job's upscaler is no longer installed"
                    )
                self.upscaler_info = {
                    **_model_info(row),
                    "id": str(row.id),
                    "autov2": autov2(row.sha256),
                    "architecture": (row.extra or {}).get("architecture"),
                    "native_scale": (row.extra or {}).get("scale"),
                }
                self.upscaler_info.pop("extra")
                self.upscaler_info.pop("kind")
                upscaler_spec = _spec(row)
            items = {i.item_index: i.seed for i in jobs_repo.get_items(s, self.job_id)}
            recorded = dict(items)
            done = {a.item_index for a in jobs_repo.list_artifacts(s, self.job_id, stage="final")}

        with self.timings.phase("model"):
            engine = self.ctx.engine_for(provider)
            self._log_load(spec.name, engine.load(spec))
            self.runtime = engine.runtime_info()
        self.plan = stage_plan(self.params)
        self.progress = {index: 1.0 if index in done else 0.0 for index in recorded}

        request = RenderRequest(
            prompt=self.params["prompt"],
            negative_prompt=self.params.get("negative_prompt"),
            width=self.params["width"],
            height=self.params["height"],
            steps=self.params["steps"],
            guidance=self.params["guidance"],
            scheduler=self.params["scheduler"],
        )
        if upscale is not None and upscaler_spec is not None:
            with self.timings.phase("model"):
                upscaler = self.ctx.upscaler()
                self._log_load(upscaler_spec.name, upscaler.load(upscaler_spec))
                self.upscaler_runtime = upscaler.runtime_info()
            self.stages = [UpscaleStage(upscaler, upscaler_spec, int(upscale["scale"]))]
            if upscale["method"] == "refine":
                refine = RefineRequest(denoise=float(upscale["denoise"]), steps=int(upscale["steps"]))
                self.stages.append(RefineStage(engine, spec, request, refine))

        pending = [i for i in sorted(recorded) if i not in done]
        # A local engine names its device (the batch default differs on CPU); a remote one has none.
        device = getattr(engine, "device", None)
        batch_size = 1 if self.params.get("batch_invariant") else self.ctx.settings.batch_limit(device)
        while pending:
            self.check()
            batch = self._start_batch(pending[:batch_size], recorded)
            try:
                images = self._render_batch(engine, spec, request, batch)
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
                with item_context(item.index):
                    with self.timings.phase("stages"):
                        final = self._later_stages(item, image)
                    keep = image if self.stages and upscale and upscale.get("keep_base") else None
                    self._store_item(item, final, base=keep, batch_size=len(batch), position=position)
                done.add(item.index)
            pending = pending[len(batch) :]

    def _log_load(self, name: str, seconds: float) -> None:
        if seconds:
            metrics.MODEL_LOAD_SECONDS.observe(seconds)
            with self._transaction() as s:
                log_event(s, self.job_id, "info", f"model {name!r} loaded in {seconds:.2f}s")

    def _later_stages(self, item: _Item, image: Image.Image) -> Image.Image:
        """Run the job's stages after generation over one item's image; logs each start and end."""
        if not self.stages:
            return image
        with self._transaction() as s:
            log_event(
                s,
                self.job_id,
                "info",
                f"item {item.index}: generated {image.width}x{image.height}",
                item.index,
            )
        for stage in self.stages:
            self.check()
            with self._transaction() as s:
                row = jobs_repo.get_item(s, self.job_id, item.index)
                if row is not None:
                    row.stage = stage.name
                log_event(
                    s,
                    self.job_id,
                    "info",
                    f"item {item.index}: {stage.name} {stage.describe(image)}",
                    item.index,
                )
            started = time.monotonic()
            image = stage.run(item.seed, image, self._reporter([item], stage.name))
            metrics.STAGE_SECONDS.labels(stage.name).observe(time.monotonic() - started)
            with self._transaction() as s:
                log_event(
                    s,
                    self.job_id,
                    "info",
                    f"item {item.index}: {stage.name} done in {time.monotonic() - started:.2f}s "
                    f"({image.width}x{image.height})",
                    item.index,
                )
        return image

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
        with self._transaction() as s:
            for item in batch:
                row = jobs_repo.get_item(s, self.job_id, item.index)
                assert row is not None
                row.seed = item.seed
                row.status = "running"
                row.stage = DENOISE
                row.progress = 0.0
                self.progress[item.index] = 0.0
                log_event(
                    s, self.job_id, "info", f"item {item.index}: rendering with seed {item.seed}", item.index
                )
        return batch

    def _retry_smaller(self, batch: list[_Item], batch_size: int, exc: OutOfMemory) -> None:
        with self._transaction() as s:
            for item in batch:
                row = jobs_repo.get_item(s, self.job_id, item.index)
                if row is not None:
                    row.status, row.progress = "pending", 0.0
                self.progress[item.index] = 0.0
            log_event(
                s,
                self.job_id,
                "warning",
                f"GPU out of memory with {len(batch)} images in one call ({exc.message}); "
                f"retrying the remaining items {batch_size} at a time (slower, same images)",
            )

    def _write_progress(self, reports: Mapping[int, StepReport]) -> bool:
        """The progress writer's transaction: the items' progress and events; True if canceled."""
        with transaction(self.ctx.sessions) as s:
            for index, report in reports.items():
                row = jobs_repo.get_item(s, self.job_id, index)
                if row is not None:
                    row.progress = report.progress
                self._progress_event(s, index, report.stage, report.step, report.total, report.progress)
            # The cancel flag rides on the progress write: one round trip per interval, not two.
            return jobs_repo.cancel_requested(s, self.job_id)

    def _progress_event(
        self, s: Session, item_index: int, stage: str, step: int, total: int, progress: float | None = None
    ) -> None:
        add_event(
            s,
            self.job_id,
            EventKind.progress,
            {
                "item_index": item_index,
                "stage": stage,
                "progress": round(self.progress[item_index] if progress is None else progress, 4),
                "step": step,
                "steps": total,
                "overall": round(sum(self.progress.values()) / max(self.count, 1), 4),
            },
            item_index,
        )

    def _reporter(self, items: list[_Item], stage: str) -> StepCallback:
        """The step callback of one engine call over `items` in `stage`: throttled progress writes
        that carry the cancel check, and the cheap checks on every other step. A step reported again
        is a heartbeat: it runs the checks (cancel, shutdown, time limit) and writes nothing."""
        last_emit = 0.0
        last_step: tuple[int, int] | None = None

        def on_step(step: int, total: int) -> None:
            nonlocal last_emit, last_step
            self._check_worker()
            if (step, total) == last_step:
                # A heartbeat (a remote engine waiting on its provider): nothing new to report.
                self.check()
                return
            last_step = (step, total)
            now = time.monotonic()
            if not (1 < step < total and now - last_emit < PROGRESS_INTERVAL_SECONDS):
                last_emit = now
                item_progress = self.plan.progress(stage, step, total)
                for item in items:
                    self.progress[item.index] = item_progress
                assert self.writer is not None
                report = StepReport(stage, step, total, item_progress)
                self.writer.report(dict.fromkeys((item.index for item in items), report))
            self.check()

        return on_step

    def _render_batch(
        self, engine: Engine, spec: ModelSpec, request: RenderRequest, batch: list[_Item]
    ) -> list[Image.Image]:
        with metrics.stage_timer(DENOISE), self.timings.phase("denoise"):
            return engine.render(spec, request, [item.seed for item in batch], self._reporter(batch, DENOISE))

    def _encoded(self, item: _Item, image: Image.Image, *, stage: str, batch: dict[str, int]) -> bytes:
        """The item's image as stored: its recipe embedded unless the job said not to."""
        fmt = self.params["format"]
        if not self.params.get("embed_metadata", True):
            with self.timings.phase("encode"):
                return encode_image(image, fmt)
        with self.timings.phase("metadata"):
            infotext, recipe = self._recipe(item, stage=stage, batch=batch)
        with self.timings.phase("encode"):
            return encode_image(image, fmt, infotext, recipe)

    def _recipe(self, item: _Item, *, stage: str, batch: dict[str, int]) -> tuple[str, dict[str, Any]]:
        """The item's infotext and recipe, as its image embeds them."""
        params = self.params
        upscale = upscale_params(params)
        record = None
        if stage == "final" and upscale is not None:
            base_size = (params["width"], params["height"])
            record = upscale_record(dict(upscale), self.upscaler_info, self.upscaler_runtime, base_size)
        if self.model_info.get("kind") == REMOTE_KIND:
            return compose_remote(
                job_id=self.job_id,
                item_index=item.index,
                count=self.count,
                params=params,
                model=self.model_info,
                runtime=self.runtime,
            )
        return compose(
            job_id=self.job_id,
            item_index=item.index,
            count=self.count,
            params=params,
            seed=item.seed,
            model=self.model_info,
            runtime=self.runtime,
            batch=batch,
            upscale=record,
            stage=stage if upscale is not None else None,
        )

    def _store_item(
        self, item: _Item, image: Image.Image, *, base: Image.Image | None, batch_size: int, position: int
    ) -> None:
        """Encode, store, then record one item (and its base image): announced as soon as it is done."""
        fmt = self.params["format"]
        batch = {"size": batch_size, "position": position}
        images = [("base", base)] if base is not None else []
        images.append(("final", image))
        stored: list[tuple[str, Image.Image, str, bytes]] = []
        for stage, picture in images:
            with metrics.stage_timer("encode"):
                data = self._encoded(item, picture, stage=stage, batch=batch)
            key = artifact_key(self.job_id, item.index, fmt, stage)
            # Store first, then record: an artifact row always points at bytes that exist.
            with metrics.stage_timer("upload"), self.timings.phase("store"):
                self.ctx.store.put(key, data, CONTENT_TYPES[fmt])
            stored.append((stage, picture, key, data))
        with self._transaction() as s:
            job = self.owned_job(s)
            for stage, picture, key, data in stored:
                artifact = jobs_repo.get_artifact_for_item(s, self.job_id, item.index, stage)
                if artifact is None:
                    artifact = Artifact(
                        job_id=self.job_id,
                        item_index=item.index,
                        stage=stage,
                        format=fmt,
                        content_type=CONTENT_TYPES[fmt],
                        width=picture.width,
                        height=picture.height,
                        seed=item.seed,
                        s3_key=key,
                        size_bytes=len(data),
                        sha256=hashlib.sha256(data).hexdigest(),
                    )
                    s.add(artifact)
                    s.flush()
                add_event(
                    s,
                    self.job_id,
                    EventKind.artifact,
                    {"artifact_id": str(artifact.id), "stage": stage},
                    item.index,
                )
                log_event(
                    s, self.job_id, "info", f"item {item.index}: stored {key} ({len(data)} bytes)", item.index
                )
            row = jobs_repo.get_item(s, self.job_id, item.index)
            assert row is not None
            row.status = "succeeded"
            row.progress = 1.0
            row.stage = STORE
            self.progress[item.index] = 1.0
            job.completed = jobs_repo.count_final_artifacts(s, self.job_id)
            job.updated_at = utcnow()
            self._progress_event(s, item.index, STORE, 1, 1)
            stage_delivery(s, job, WebhookEvent.item, item.index)
        metrics.IMAGES.inc()


def _model_info(model: Model) -> dict[str, Any]:
    """What the recipe records about a model."""
    return {
        "id": model.id,
        "name": model.name,
        "sha256": model.sha256,
        "version": model.version,
        "source": model.source,
        "revision": model.revision,
        "extra": dict(model.extra or {}),
        "kind": model.kind,
    }


def _spec(model: Model) -> ModelSpec:
    """Where an engine finds a model's files."""
    return ModelSpec(
        id=model.id,
        name=model.name,
        layout=model.layout,
        path=model.path,
        config_path=model.config_path,
        sha256=model.sha256,
    )


def run_job(ctx: WorkerContext, job_id: uuid.UUID) -> JobStatus | None:
    """Claim `job_id` and run it to `succeeded`, `failed` or `canceled` (`queued` again if the
    worker is stopping).

    Returns None if the job was not ours to run (running elsewhere, finished, missing, or lost).
    Raises `DeviceFault` after re-queueing the job when the device is lost: the process must exit.
    """
    with job_context(job_id):
        return _run_job(ctx, job_id)


def _claim(ctx: WorkerContext, job_id: uuid.UUID, timings: JobTimings) -> bool:
    """Claim the job, settling an abandoned attempt of it first if need be (its queue wait noted in
    `timings`); False if it is not ours to run."""
    with transaction(ctx.sessions) as s:
        if _claim_queued(ctx, s, job_id, timings):
            return True
    # A redelivered message may find its job still marked running by a worker that died: settle it
    # (re-queued, or ended if out of attempts) and try again. Only here, so a queued job's claim,
    # nearly every claim, costs one transaction.
    with transaction(ctx.sessions) as s:
        settle_abandoned(s, ctx.settings.max_attempts, job_id)
    with transaction(ctx.sessions) as s:
        if _claim_queued(ctx, s, job_id, timings):
            return True
        job = jobs_repo.get_job(s, job_id)
        log.info("job %s not claimed (status %s)", job_id, job.status if job else "missing")
        return False


def _claim_queued(ctx: WorkerContext, s: Session, job_id: uuid.UUID, timings: JobTimings) -> bool:
    """Stage queued -> running for this worker with the start's events; False if the job is not queued."""
    settings = ctx.settings
    if not jobs_repo.claim_job(s, job_id, ctx.worker_id, settings.lease_seconds):
        return False
    # The session is fresh, so this reads the row as the claim left it.
    job = jobs_repo.get_job(s, job_id)
    assert job is not None and job.started_at is not None
    timings.ms["queue_wait"] = max(0.0, (job.started_at - job.created_at).total_seconds() * 1000)
    add_event(s, job_id, EventKind.status, {"status": JobStatus.running.value})
    log_event(
        s, job_id, "info", f"started on {ctx.worker_id} (attempt {job.attempts} of {settings.max_attempts})"
    )
    # Sent once per job (a re-run after a crash does not start it again for the receiver).
    stage_delivery(s, job, WebhookEvent.start)
    return True


def _run_job(ctx: WorkerContext, job_id: uuid.UUID) -> JobStatus | None:
    settings = ctx.settings
    timings = JobTimings()
    with timings.phase("claim"):
        try:
            claimed = _claim(ctx, job_id, timings)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # A backend killed (or a failover) between the pool's liveness check and the claim: the pool
            # has been invalidated, so a second try gets a fresh connection. A claim that committed
            # before the drop finds the job running and stops; its lease brings the job back.
            log.warning(
                "job %s: database connection lost while claiming (%s); trying again", job_id, exc.orig
            )
            claimed = _claim(ctx, job_id, timings)
    if not claimed:
        return None
    started = time.monotonic()

    status = JobStatus.succeeded
    code: ErrorCode | None = None
    message: str | None = None
    with LeaseKeeper(ctx, job_id) as lease:
        run = _JobRun(ctx, job_id, lease, timings)
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
            failed = False
            try:
                with transaction(ctx.sessions) as s:
                    job = run.owned_job(s)
                    if job.attempts >= settings.max_attempts:
                        # A job that breaks every GPU it meets must not loop through the workers.
                        finish_job(s, job, JobStatus.failed, exc.code, exc.message)
                        failed = True
                    else:
                        requeue_job(s, job, f"the GPU failed ({exc.message}); moving to a fresh worker")
            except JobLost:
                pass
            if failed:
                metrics.job_finished(JobStatus.failed.value, exc.code, time.monotonic() - started)
            raise
        except JobCanceled:
            status = JobStatus.canceled
        except DreamForgeError as exc:
            status, code, message = JobStatus.failed, exc.code, exc.message
        except Exception as exc:
            if settings.distributed and isinstance(exc, DBAPIError) and exc.connection_invalidated:
                # The database dropped the connection under the job (a restart, a failover, a killed
                # backend): not the job's fault, so not a failure. Re-queue it on a fresh connection
                # (an attempt used, the stored items kept); if the database is still away, stop as a
                # crash would and let the lapsed lease bring the job back.
                log.warning("job %s: database connection lost (%s); re-queueing", job_id, exc.orig)
                try:
                    with transaction(ctx.sessions) as s:
                        requeue_job(s, run.owned_job(s), "the database connection was lost; re-queued")
                except Exception as again:
                    log.warning("job %s: not re-queued (%s); left to lease recovery", job_id, again)
                    return None
                return JobStatus.queued
            log.exception("job %s crashed", job_id)
            status, code, message = JobStatus.failed, ErrorCode.engine_error, f"{type(exc).__name__}: {exc}"
        final = time.perf_counter()
        try:
            with transaction(ctx.sessions) as s:
                job = run.owned_job(s)
                timings.stop()
                # In the status's own transaction: no commit of its own, and logged before `done`.
                log_event(s, job_id, "info", timings.line())
                finish_job(s, job, status, code, message)
        except JobLost:
            return None
    # The histogram counts the final transaction too, which the line it carried could not.
    timings.ms["commits"] += (time.perf_counter() - final) * 1000
    timings.stop()
    timings.observe()
    metrics.job_finished(status.value, code, time.monotonic() - started)
    return status
