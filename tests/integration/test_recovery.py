"""Recovery on Postgres, Redis and S3: abandoned jobs, unsent jobs, lost leases and a storage outage."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from conftest import redis_url, register_tiny, stage_job
from s3_server import MotoS3
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from support import free_port

from dreamforge.api.schemas import JobStatus
from dreamforge.broker.celery import CeleryDispatcher, make_celery
from dreamforge.config import Settings
from dreamforge.db.session import create_db_engine, make_session_factory, transaction
from dreamforge.db.tables import Job, utcnow
from dreamforge.events.repository import events_after
from dreamforge.jobs import repository as jobs_repo
from dreamforge.jobs.recovery import Reconciler
from dreamforge.runtime import engine_providers
from dreamforge.storage.s3 import S3ArtifactStore
from dreamforge.worker import celery_app
from dreamforge.worker.context import WorkerContext
from dreamforge.worker.runner import run_job


@pytest.fixture
def distributed(settings: Settings, pg_url: str, tiny_model_dir: Path) -> Iterator[Settings]:
    """Settings of the distributed topology on a fresh database and a queue of this test's own."""
    register_tiny(pg_url, tiny_model_dir)
    broker = redis_url()
    s = settings.model_copy(
        update={"db_url": pg_url, "redis_url": broker, "queue": f"gpu.default.test-{uuid.uuid4().hex[:8]}"}
    )
    yield s
    redis.Redis.from_url(broker).delete(s.queue)


@pytest.fixture
def reconciler(distributed: Settings) -> Iterator[Reconciler]:
    engine = create_db_engine(distributed.database_url)
    sessions = make_session_factory(engine)
    dispatcher = CeleryDispatcher(make_celery(distributed), sessions, distributed.queue)
    yield Reconciler(sessions, dispatcher, max_attempts=2, interval_seconds=60)
    engine.dispose()


def _queue_length(settings: Settings) -> int:
    return int(redis.Redis.from_url(settings.redis_url).llen(settings.queue))


def _submit(rec: Reconciler, **params: object) -> uuid.UUID:
    return stage_job(rec.sessions, **params)


def _age(rec: Reconciler, job_id: uuid.UUID, seconds: float) -> None:
    """Pretend the job was last touched `seconds` ago."""
    with transaction(rec.sessions) as s:
        s.execute(
            update(Job).where(Job.id == job_id).values(updated_at=utcnow() - timedelta(seconds=seconds))
        )


def test_a_job_no_message_carries_is_sent_once(reconciler: Reconciler, distributed: Settings) -> None:
    job_id = _submit(reconciler)
    # As if the API died between committing the job and publishing its message.
    assert reconciler.sweep() == 0, "a just-accepted job is the API's to send"
    _age(reconciler, job_id, 600)
    assert reconciler.sweep() == 1
    assert _queue_length(distributed) == 1
    assert reconciler.sweep() == 0, "a sent job is not sent again"
    with reconciler.sessions() as s:
        job = jobs_repo.get_job(s, job_id)
        assert job is not None and job.dispatched_at is not None


def test_a_job_whose_claim_met_the_database_away_is_sent_again(
    distributed: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's task: a database error out of `run_job` is acknowledged with the message, and the
    job, marked as sent, would then wait for a message that no longer exists."""
    engine = create_db_engine(distributed.database_url)
    job_id = stage_job(make_session_factory(engine))
    engine.dispose()

    def database_away(_ctx: WorkerContext, _job_id: uuid.UUID) -> None:
        raise OperationalError("UPDATE jobs ...", {}, Exception("connection refused"))

    monkeypatch.setattr(celery_app, "run_job", database_away)
    monkeypatch.setattr(celery_app, "RESEND_AFTER_DB_ERROR_SECONDS", 0.0)
    # The task's own state object: the app's other parts connect process-wide signals.
    state = celery_app._WorkerState(distributed, make_celery(distributed))
    try:
        assert state.run(str(job_id)) is None
        assert _queue_length(distributed) == 1, "the job was sent again"
    finally:
        if state.runtime is not None:
            state.runtime.close()


def test_abandoned_jobs_are_requeued_then_failed_when_out_of_attempts(
    reconciler: Reconciler, distributed: Settings
) -> None:
    job_id = _submit(reconciler)
    for attempt in (1, 2):
        with transaction(reconciler.sessions) as s:
            assert jobs_repo.claim_job(s, job_id, "dead-worker:1", lease_seconds=0.05)
        time.sleep(0.1)
        reconciler.sweep()
        with reconciler.sessions() as s:
            job = jobs_repo.get_job(s, job_id)
            assert job is not None and job.attempts == attempt
            expected = JobStatus.queued if attempt == 1 else JobStatus.failed
            assert job.status == expected.value
    assert job is not None and job.error_code == "worker_lost"
    assert _queue_length(distributed) == 1, "the re-queued job was sent to the workers again"
    with reconciler.sessions() as s:
        kinds = [e.kind for e in events_after(s, job_id, 0)]
    assert kinds[-1] == "done"


def test_a_live_lease_is_left_alone(reconciler: Reconciler) -> None:
    job_id = _submit(reconciler)
    with transaction(reconciler.sessions) as s:
        assert jobs_repo.claim_job(s, job_id, "busy-worker:1", lease_seconds=60)
    reconciler.sweep()
    with reconciler.sessions() as s:
        job = jobs_repo.get_job(s, job_id)
        assert job is not None and job.status == "running" and job.worker_id == "busy-worker:1"


def _context(settings: Settings, store: S3ArtifactStore) -> WorkerContext:
    sessions = make_session_factory(create_db_engine(settings.database_url))
    return WorkerContext(
        settings=settings,
        sessions=sessions,
        store=store,
        engines=engine_providers(settings),
    )


def test_storage_outage_fails_the_item_clearly_and_lists_nothing(distributed: Settings) -> None:
    dead = S3ArtifactStore(
        endpoint=f"http://127.0.0.1:{free_port()}",
        access_key="x",
        secret_key="x",
        bucket="gone",
        retry_attempts=2,
        retry_max_wait=0.2,
    )
    ctx = _context(distributed, dead)
    job_id = stage_job(ctx.sessions, prompt="x", steps=30)
    assert run_job(ctx, job_id) is JobStatus.failed
    with ctx.sessions() as s:
        failed = jobs_repo.get_job(s, job_id)
        assert failed is not None and failed.error_code == "storage_unavailable"
        assert "127.0.0.1" in (failed.error_message or "")
        assert jobs_repo.list_artifacts(s, job_id) == []


def test_a_worker_whose_job_was_taken_away_writes_nothing(
    distributed: Settings, moto_s3: MotoS3, reconciler: Reconciler
) -> None:
    bucket = f"df-lost-{uuid.uuid4().hex[:8]}"
    store = S3ArtifactStore(
        endpoint=moto_s3.endpoint, access_key="testing", secret_key="testing", bucket=bucket
    )
    store.ensure_bucket()
    ctx = _context(distributed.model_copy(update={"lease_seconds": 1.0}), store)
    job_id = _submit(reconciler, steps=200, width=128, height=128)

    def steal() -> None:
        # Another process decides the job was abandoned while this worker is still rendering.
        time.sleep(1.5)
        with transaction(ctx.sessions) as s:
            job = jobs_repo.get_job(s, job_id)
            assert job is not None
            job.status = JobStatus.queued.value
            job.worker_id = None

    thief = threading.Thread(target=steal)
    thief.start()
    assert run_job(ctx, job_id) is None
    thief.join()
    with ctx.sessions() as s:
        job = jobs_repo.get_job(s, job_id)
        assert job is not None and job.status == "queued"
        assert jobs_repo.list_artifacts(s, job_id) == []
