"""`run_job` with an `upscale` step: stages, progress, artifacts, metadata, crashes and cancels.

The real path runs the tiny SDXL model and a tiny ESRGAN loaded by spandrel; the fake path (no
torch) checks the job bookkeeping alone.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import register_tiny, register_upscaler_file, stage_job
from fake_engine import FakeEngine, FakeUpscaler
from PIL import Image
from sqlalchemy import update

from dreamforge.api.schemas import DEFAULT_PROVIDER, JobStatus
from dreamforge.api.views import job_view, progress_view
from dreamforge.config import Settings
from dreamforge.db.session import create_db_engine, make_session_factory, transaction
from dreamforge.db.tables import Job
from dreamforge.engines.base import ModelSpec, StepCallback, Upscaler
from dreamforge.events.repository import events_after
from dreamforge.jobs import repository as jobs_repo
from dreamforge.jobs.lifecycle import settle_interrupted
from dreamforge.recipe.embed import read_metadata
from dreamforge.recipe.infotext import parse_infotext
from dreamforge.registry.hashing import autov2
from dreamforge.registry.repository import get_model
from dreamforge.runtime import build_store, engine_providers, make_upscaler
from dreamforge.worker.context import WorkerContext
from dreamforge.worker.runner import run_job


def _context(settings: Settings, *, fake: bool, upscaler: Upscaler | None = None) -> WorkerContext:
    db = create_db_engine(settings.database_url)
    return WorkerContext(
        settings=settings,
        sessions=make_session_factory(db),
        store=build_store(settings),
        engines={DEFAULT_PROVIDER: FakeEngine} if fake else engine_providers(settings),
        upscalers=(lambda: upscaler) if upscaler is not None else make_upscaler(settings),
    )


@pytest.fixture
def installed(settings: Settings, tiny_model_dir: Path, tiny_upscalers: dict[int, Path]) -> dict[str, str]:
    """The tiny checkpoint and both tiny upscalers registered; their ids by name."""
    return {
        "checkpoint": register_tiny(settings.database_url, tiny_model_dir),
        "x2": register_upscaler_file(settings.database_url, tiny_upscalers[2], "tiny-up-x2"),
        "x4": register_upscaler_file(settings.database_url, tiny_upscalers[4], "tiny-up-x4"),
    }


@pytest.fixture
def real(settings: Settings, installed: dict[str, str]) -> WorkerContext:
    """A worker with the tiny SDXL model and the spandrel upscaler."""
    return _context(settings, fake=False)


def _events(ctx: WorkerContext, job_id: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
    with ctx.sessions() as s:
        return [(e.kind, dict(e.data)) for e in events_after(s, job_id, 0)]


def _pixels(data: bytes) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _artifacts(ctx: WorkerContext, job_id: uuid.UUID) -> list[tuple[int, str, int, int, bytes]]:
    with ctx.sessions() as s:
        rows = jobs_repo.list_artifacts(s, job_id)
        return [(a.item_index, a.stage, a.width, a.height, ctx.store.get(a.s3_key)) for a in rows]


def test_model_upscale_delivers_each_item_at_twice_the_size_with_hires_metadata(
    real: WorkerContext, installed: dict[str, str]
) -> None:
    # A 4x model asked for 2x: it runs once and the result is resized to exactly 2x.
    job_id = stage_job(
        real.sessions, count=2, seed=7, upscale={"scale": 2, "upscaler_model_id": installed["x4"]}
    )
    assert run_job(real, job_id) is JobStatus.succeeded
    artifacts = _artifacts(real, job_id)
    assert [(i, stage, w, h) for i, stage, w, h, _ in artifacts] == [
        (0, "final", 128, 128),
        (1, "final", 128, 128),
    ]
    assert Image.open(io.BytesIO(artifacts[0][4])).size == (128, 128)
    meta = read_metadata(artifacts[0][4])
    assert meta.infotext is not None and meta.recipe is not None
    _, _, params = parse_infotext(meta.infotext)
    assert params["Size"] == "64x64"  # A1111 writes the size before the hires pass
    assert params["Hires upscale"] == "2"
    assert params["Hires upscaler"] == "tiny-up-x4"
    assert "Hires steps" not in params and "Denoising strength" not in params
    with real.sessions() as s:
        row = get_model(s, uuid.UUID(installed["x4"]))
        assert row is not None
        sha = row.sha256
    assert f'"upscaler": "{autov2(sha)}"' in params["Hashes"]
    recipe = meta.recipe["upscale"]
    assert (recipe["method"], recipe["scale"], recipe["width"], recipe["height"]) == ("model", 2, 128, 128)
    assert recipe["upscaler"]["sha256"] == sha
    assert recipe["upscaler"]["architecture"] == "ESRGAN"
    assert recipe["upscaler"]["native_scale"] == 4
    assert meta.recipe["stage"] == "final"

    events = _events(real, job_id)
    stages_seen = {d["stage"] for kind, d in events if kind == "progress"}
    assert {"denoise", "upscale", "encode_and_store"} <= stages_seen
    overall = [d["overall"] for kind, d in events if kind == "progress"]
    assert overall == sorted(overall) and overall[-1] == 1.0
    logs = [d["message"] for kind, d in events if kind == "log"]
    assert any(m.startswith("item 1: upscale 2x with 'tiny-up-x4' to 128x128") for m in logs)
    assert any(m.startswith("item 1: upscale done in") for m in logs)


def test_refine_runs_its_own_denoising_steps_and_reproduces_the_same_pixels(
    real: WorkerContext, installed: dict[str, str]
) -> None:
    upscale = {
        "scale": 2,
        "method": "refine",
        "denoise": 0.5,
        "steps": 4,
        "upscaler_model_id": installed["x2"],
    }
    first = stage_job(real.sessions, seed=99, steps=3, upscale=upscale, embed_metadata=False)
    second = stage_job(real.sessions, seed=99, steps=3, upscale=upscale, embed_metadata=False)
    assert run_job(real, first) is JobStatus.succeeded
    assert run_job(real, second) is JobStatus.succeeded
    a, b = _artifacts(real, first)[0], _artifacts(real, second)[0]
    assert (a[2], a[3]) == (128, 128)
    # Without embedded metadata (which names the job) the files themselves are identical.
    assert a[4] == b[4]

    refine = [d for kind, d in _events(real, first) if kind == "progress" and d["stage"] == "refine"]
    # int(4 * 0.5) = 2 img2img steps ran, after the 3 text-to-image steps.
    assert [(d["step"], d["steps"]) for d in refine] == [(1, 2), (2, 2)]
    assert refine[-1]["progress"] == pytest.approx(0.9)


def test_refine_metadata_reads_as_a1111_hires_fix(real: WorkerContext, installed: dict[str, str]) -> None:
    upscale = {
        "scale": 2,
        "method": "refine",
        "denoise": 0.5,
        "steps": 4,
        "upscaler_model_id": installed["x2"],
    }
    job_id = stage_job(real.sessions, seed=5, upscale=upscale)
    assert run_job(real, job_id) is JobStatus.succeeded
    meta = read_metadata(_artifacts(real, job_id)[0][4])
    assert meta.infotext is not None and meta.recipe is not None
    _, _, params = parse_infotext(meta.infotext)
    assert {
        k: params[k] for k in ("Denoising strength", "Hires upscale", "Hires steps", "Hires upscaler")
    } == {
        "Denoising strength": "0.5",
        "Hires upscale": "2",
        "Hires steps": "4",
        "Hires upscaler": "tiny-up-x2",
    }
    assert meta.recipe["upscale"]["executed_steps"] == 2


def test_keep_base_stores_the_generated_image_beside_the_upscaled_one(
    settings: Settings, installed: dict[str, str]
) -> None:
    ctx = _context(settings, fake=True, upscaler=FakeUpscaler())
    job_id = stage_job(ctx.sessions, count=2, upscale={"scale": 4, "keep_base": True})
    assert run_job(ctx, job_id) is JobStatus.succeeded
    artifacts = _artifacts(ctx, job_id)
    assert [(i, stage, w) for i, stage, w, _, _ in artifacts] == [
        (0, "base", 64),
        (0, "final", 256),
        (1, "base", 64),
        (1, "final", 256),
    ]
    base_meta = read_metadata(artifacts[0][4])
    assert base_meta.recipe is not None and base_meta.infotext is not None
    assert base_meta.recipe["stage"] == "base" and "upscale" not in base_meta.recipe
    assert "Hires upscale" not in base_meta.infotext
    with ctx.sessions() as s:
        job = jobs_repo.get_job(s, job_id)
        assert job is not None
        assert job.completed == 2  # items, not files
        view = job_view(job)
        progress = progress_view(job, list(jobs_repo.get_items(s, job_id)))
    assert [(step.name, step.status) for step in view.steps] == [
        ("generate", "succeeded"),
        ("upscale", "succeeded"),
    ]
    assert [st.name for st in progress.stages] == ["denoise", "upscale", "encode_and_store"]
    assert sum(st.weight for st in progress.stages) == pytest.approx(1.0)
    # The newest upscaler is the default: the x4 one was registered last.
    assert _events(ctx, job_id)[1][1]["message"].endswith("upscaled with 'tiny-up-x4'")


class _DiesOnItem:
    """An upscaler whose process 'dies' (an exception no handler catches) before upscaling item N."""

    def __init__(self, inner: Upscaler, calls_before_death: int) -> None:
        self.inner = inner
        self.left = calls_before_death

    def load(self, model: ModelSpec) -> float:
        return self.inner.load(model)

    def upscale(self, model: ModelSpec, image: Image.Image, scale: int, on_step: StepCallback) -> Image.Image:
        if self.left == 0:
            raise KeyboardInterrupt("the worker process died between the stages")
        self.left -= 1
        return self.inner.upscale(model, image, scale, on_step)

    def runtime_info(self) -> dict[str, str]:
        return self.inner.runtime_info()


def test_a_crash_between_the_stages_of_item_1_keeps_item_0_and_redoes_item_1(
    settings: Settings, installed: dict[str, str]
) -> None:
    from dreamforge.engines.upscale import SpandrelUpscaler

    upscale = {"scale": 2, "upscaler_model_id": installed["x2"]}
    params: dict[str, Any] = {
        "count": 2,
        "seed": 11,
        "seed_strategy": "sequential",
        "batch_invariant": True,
        "upscale": upscale,
    }
    healthy = _context(settings, fake=False)
    reference = stage_job(healthy.sessions, **params)
    assert run_job(healthy, reference) is JobStatus.succeeded

    dying = _context(settings, fake=False, upscaler=_DiesOnItem(SpandrelUpscaler(tile=0), 1))
    job_id = stage_job(dying.sessions, **params)
    with pytest.raises(KeyboardInterrupt):
        run_job(dying, job_id)
    before = _artifacts(dying, job_id)
    assert [(i, stage) for i, stage, *_ in before] == [(0, "final")]
    with dying.sessions() as s:
        item1 = jobs_repo.get_item(s, job_id, 1)
        assert item1 is not None and item1.stage == "upscale"  # generated, never upscaled
    # What the next worker's startup does with a job whose worker is gone.
    with transaction(dying.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=None))
        assert settle_interrupted(s, max_attempts=3) == ([job_id], [])

    assert run_job(healthy, job_id) is JobStatus.succeeded
    after = _artifacts(healthy, job_id)
    assert after[0] == before[0]  # item 0 untouched
    expected = _artifacts(healthy, reference)
    assert [(i, w, h) for i, _, w, h, _ in after] == [(0, 128, 128), (1, 128, 128)]
    # Item 1 was redone from its recorded seed: the same pixels as the uninterrupted job's.
    assert np.array_equal(_pixels(after[1][4]), _pixels(expected[1][4]))


class _CancelsFirst:
    """An upscaler that asks for the job's cancel just as it starts its first tile."""

    def __init__(self, inner: Upscaler, ctx_ref: list[WorkerContext], job_ref: list[uuid.UUID]) -> None:
        self.inner, self.ctx_ref, self.job_ref = inner, ctx_ref, job_ref

    def load(self, model: ModelSpec) -> float:
        return self.inner.load(model)

    def upscale(self, model: ModelSpec, image: Image.Image, scale: int, on_step: StepCallback) -> Image.Image:
        from dreamforge.jobs.service import cancel_job

        with self.ctx_ref[0].sessions() as s:
            cancel_job(s, self.job_ref[0])
        return self.inner.upscale(model, image, scale, on_step)

    def runtime_info(self) -> dict[str, str]:
        return self.inner.runtime_info()


def test_cancel_stops_within_a_tile_of_the_upscale_stage(
    settings: Settings, installed: dict[str, str]
) -> None:
    from dreamforge.engines.upscale import SpandrelUpscaler

    ctx_ref: list[WorkerContext] = []
    job_ref: list[uuid.UUID] = []
    # 32-pixel tiles: the 64x64 image is four tiles, so the stage has steps to stop between.
    ctx = _context(settings, fake=True, upscaler=_CancelsFirst(SpandrelUpscaler(tile=32), ctx_ref, job_ref))
    ctx_ref.append(ctx)
    job_id = stage_job(ctx.sessions, count=2, upscale={"scale": 2, "upscaler_model_id": installed["x2"]})
    job_ref.append(job_id)
    assert run_job(ctx, job_id) is JobStatus.canceled
    upscale_steps = [d for kind, d in _events(ctx, job_id) if kind == "progress" and d["stage"] == "upscale"]
    assert [(d["step"], d["steps"]) for d in upscale_steps] == [(1, 4)]
    assert _artifacts(ctx, job_id) == []
    with ctx.sessions() as s:
        job = jobs_repo.get_job(s, job_id)
        assert job is not None
        assert [(st.name, st.status) for st in job_view(job).steps] == [
            ("generate", "canceled"),
            ("upscale", "canceled"),
        ]
