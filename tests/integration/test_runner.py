"""`run_job` on SQLite and Postgres: the events, rows and files a job leaves behind.

Each test runs with the real SDXL engine (tiny model) and with a fake engine that needs no torch,
so the job path is checked on its own and together with the engine.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import register_tiny, stage_job
from fake_engine import FakeEngine
from sqlalchemy import delete, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from dreamforge.api.schemas import DEFAULT_PROVIDER, JobStatus
from dreamforge.config import Settings
from dreamforge.db.session import create_db_engine, make_session_factory, transaction
from dreamforge.db.tables import Artifact, Job
from dreamforge.engines.base import EngineFactory
from dreamforge.events.repository import events_after
from dreamforge.jobs import repository as jobs_repo
from dreamforge.jobs.lifecycle import settle_interrupted
from dreamforge.recipe.embed import read_metadata
from dreamforge.recipe.infotext import parse_infotext
from dreamforge.registry.repository import get_model_by_name
from dreamforge.runtime import build_store, engine_providers
from dreamforge.worker.context import WorkerContext
from dreamforge.worker.runner import run_job


@pytest.fixture(params=["sqlite-sdxl", "postgres-sdxl", "sqlite-fake"])
def ctx(request: pytest.FixtureRequest, settings: Settings, tiny_model_dir: Path) -> Iterator[WorkerContext]:
    """A worker context on SQLite (embedded default) and on Postgres (same code, other DF_DB_URL),
    with the SDXL engine, and on SQLite with the fake engine."""
    database, engine_kind = request.param.split("-")
    if database == "postgres":
        settings = settings.model_copy(update={"db_url": request.getfixturevalue("pg_url")})
    register_tiny(settings.database_url, tiny_model_dir)
    engines: dict[str, EngineFactory] = (
        engine_providers(settings) if engine_kind == "sdxl" else {DEFAULT_PROVIDER: FakeEngine}
    )
    db = create_db_engine(settings.database_url)
    yield WorkerContext(
        settings=settings, sessions=make_session_factory(db), store=build_store(settings), engines=engines
    )
    db.dispose()


def _submit(ctx: WorkerContext, **params: object) -> uuid.UUID:
    return stage_job(ctx.sessions, **{"prompt": "a blue sphere", "steps": 3, **params})


def test_job_runs_to_success_with_one_artifact_per_item(ctx: WorkerContext) -> None:
    job_id = _submit(ctx, count=2, seed=1234, negative_prompt="dull")
    assert run_job(ctx, job_id) is JobStatus.succeeded
    with ctx.sessions() as s:
        job = jobs_repo.get_job(s, job_id)
        assert job is not None
        assert (job.status, job.completed, job.attempts) == ("succeeded", 2, 1)
        artifacts = jobs_repo.list_artifacts(s, job_id)
        kinds = [e.kind for e in events_after(s, job_id, 0)]
    assert [a.item_index for a in artifacts] == [0, 1]
    assert artifacts[0].seed == 1234
    assert artifacts[1].seed != 1234
    assert kinds[:2] == ["status", "log"]
    assert kinds.count("artifact") == 2
    assert kinds[-1] == "done"
    meta = read_metadata(ctx.store.get(artifacts[0].s3_key))
    assert meta.infotext is not None and meta.recipe is not None
    prompt, negative, params = parse_infotext(meta.infotext)
    assert (prompt, negative, params["Seed"], params["Steps"]) == ("a blue sphere", "dull", "1234", "3")
    assert meta.recipe["job_id"] == str(job_id)
    assert meta.recipe["item_index"] == 0


def test_engine_failure_fails_the_job_and_the_next_job_still_runs(
    ctx: WorkerContext, tiny_model_dir: Path, tmp_path: Path
) -> None:
    broken_dir = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken_dir)
    broken_id = uuid.UUID(register_tiny(ctx.settings.database_url, broken_dir, name="broken"))
    shutil.rmtree(broken_dir)

    bad = _submit(ctx, model_id=str(broken_id))
    with ctx.sessions() as s:
        tiny = get_model_by_name(s, "tiny-sdxl")
        assert tiny is not None
    good = _submit(ctx, model_id=str(tiny.id))
    assert run_job(ctx, bad) is JobStatus.failed
    assert run_job(ctx, good) is JobStatus.succeeded
    with ctx.sessions() as s:
        job = jobs_repo.get_job(s, bad)
        assert job is not None
        assert job.error_code == "model_files_missing"
        events = list(events_after(s, bad, 0))
    error = next(e for e in events if e.kind == "error")
    assert error.data["code"] == "model_files_missing"
    assert any(
        e.kind == "log" and e.data["level"] == "error" and "model_files_missing" in e.data["message"]
        for e in events
    )
    assert events[-1].kind == "done"
    assert events[-1].data["status"] == "failed"


def test_rerun_after_a_crash_keeps_finished_items_and_recorded_seeds(ctx: WorkerContext) -> None:
    # Batch-invariant, so the re-run's different batch plan cannot change a byte (see test_batching).
    job_id = _submit(ctx, count=2, batch_invariant=True)
    run_job(ctx, job_id)
    with ctx.sessions() as s:
        before = {a.item_index: (a.id, a.sha256, a.seed) for a in jobs_repo.list_artifacts(s, job_id)}
    # Rewind to "the worker died after item 0": item 1's artifact is gone and the job is running.
    with transaction(ctx.sessions) as s:
        s.execute(delete(Artifact).where(Artifact.job_id == job_id, Artifact.item_index == 1))
        s.execute(update(Job).where(Job.id == job_id).values(status="running", completed=1))
        requeued, failed = settle_interrupted(s, max_attempts=3)
    assert (requeued, failed) == ([job_id], [])
    assert run_job(ctx, job_id) is JobStatus.succeeded
    with ctx.sessions() as s:
        after = {a.item_index: (a.id, a.sha256, a.seed) for a in jobs_repo.list_artifacts(s, job_id)}
        job = jobs_repo.get_job(s, job_id)
        assert job is not None
        assert job.attempts == 2
    assert after[0] == before[0]  # not rendered again
    assert after[1][1:] == before[1][1:]  # same seed, byte-identical image


def test_out_of_attempts_fails_with_worker_lost(ctx: WorkerContext) -> None:
    job_id = _submit(ctx)
    with transaction(ctx.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="running", attempts=3))
        requeued, failed = settle_interrupted(s, max_attempts=3)
    assert (requeued, failed) == ([], [job_id])
    with ctx.sessions() as s:
        job = jobs_repo.get_job(s, job_id)
        assert job is not None
        assert (job.status, job.error_code) == ("failed", "worker_lost")


def test_a_job_is_claimed_once(ctx: WorkerContext) -> None:
    job_id = _submit(ctx)
    assert run_job(ctx, job_id) is JobStatus.succeeded
    assert run_job(ctx, job_id) is None


def test_a_connection_dropped_as_the_job_is_claimed_is_replaced_and_the_job_runs(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _submit(ctx)
    claim = jobs_repo.claim_job
    calls: list[uuid.UUID] = []

    def dropped_once(session: Session, job: uuid.UUID, worker_id: str, lease_seconds: float) -> bool:
        calls.append(job)
        if len(calls) == 1:
            # What the driver raises when Postgres killed the backend between the pool's ping and the claim.
            raise OperationalError(
                "UPDATE jobs ...", {}, Exception("server closed the connection"), connection_invalidated=True
            )
        return claim(session, job, worker_id, lease_seconds)

    monkeypatch.setattr(jobs_repo, "claim_job", dropped_once)
    assert run_job(ctx, job_id) is JobStatus.succeeded
    assert len(calls) == 2
    with ctx.sessions() as s:
        job = jobs_repo.get_job(s, job_id)
        assert job is not None and (job.status, job.attempts) == ("succeeded", 1)
