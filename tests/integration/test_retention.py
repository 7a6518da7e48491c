"""Retention on SQLite and Postgres, with the local and the S3 store: what a sweep deletes and keeps.

Jobs are staged as the API would (`stage_job`) and then aged by editing their rows; a finished job's
artifacts are stored in the store and recorded as the worker would. No engine runs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import stage_job
from prometheus_client import REGISTRY
from s3_server import MotoS3
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from dreamforge.cli.main import app
from dreamforge.config import Settings
from dreamforge.db.migrate import upgrade_to_head
from dreamforge.db.session import create_db_engine, make_session_factory, transaction
from dreamforge.db.tables import Artifact, Job, JobEvent, JobItem, Model, WebhookDelivery, utcnow
from dreamforge.jobs.retention import RetentionSweeper, SweepResult, cutoff_for, expired_jobs, sweep
from dreamforge.runtime import build_runtime
from dreamforge.storage.base import ArtifactStore, artifact_key
from dreamforge.storage.local import LocalArtifactStore
from dreamforge.storage.s3 import S3ArtifactStore
from dreamforge.webhooks.outbox import WebhookEvent, stage_delivery

DAYS = 1.0
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100


@dataclass
class Env:
    sessions: sessionmaker[Session]
    store: ArtifactStore


def _migrated(url: str) -> Iterator[sessionmaker[Session]]:
    upgrade_to_head(url)
    engine = create_db_engine(url)
    sessions = make_session_factory(engine)
    with transaction(sessions) as s:
        s.add(Model(name="tiny", layout="diffusers", path="/nowhere", sha256="0" * 64))
    yield sessions
    engine.dispose()


def _s3_store(moto_s3: MotoS3) -> S3ArtifactStore:
    store = S3ArtifactStore(
        endpoint=moto_s3.endpoint,
        access_key=moto_s3.access_key,
        secret_key=moto_s3.secret_key,
        bucket=f"df-retention-{uuid.uuid4().hex[:12]}",
        retry_attempts=2,
        retry_max_wait=0.05,
    )
    store.ensure_bucket()
    return store


def _local_store(settings: Settings) -> LocalArtifactStore:
    return LocalArtifactStore(settings.artifacts_dir, b"secret", 600)


@pytest.fixture(params=["sqlite-local", "sqlite-s3", "postgres-local", "postgres-s3"])
def env(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Env]:
    database, store_kind = request.param.split("-")
    url = request.getfixturevalue("pg_url") if database == "postgres" else settings.database_url
    settings.ensure_dirs()
    store = _s3_store(request.getfixturevalue("moto_s3")) if store_kind == "s3" else _local_store(settings)
    for sessions in _migrated(url):
        yield Env(sessions, store)


@pytest.fixture
def sqlite_env(settings: Settings) -> Iterator[Env]:
    settings.ensure_dirs()
    for sessions in _migrated(settings.database_url):
        yield Env(sessions, _local_store(settings))


def make_job(
    env: Env,
    status: str,
    *,
    age_days: float,
    count: int = 2,
    artifacts: int | None = None,
    base: bool = False,
) -> uuid.UUID:
    """A job in `status` that finished (or, unfinished, was created and started) `age_days` ago, with
    `artifacts` items stored (all of them by default), each with its base image too if `base`."""
    job_id = stage_job(env.sessions, count=count, webhook="https://hooks.example.com/df")
    when = utcnow() - timedelta(days=age_days)
    stored = count if artifacts is None else artifacts
    with transaction(env.sessions) as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.status = status
        job.created_at = job.started_at = when - timedelta(minutes=1)
        job.finished_at = when if status in ("succeeded", "failed", "canceled") else None
        job.completed = stored
        if job.finished_at is not None:
            # A delivery still being retried goes with its job.
            stage_delivery(s, job, WebhookEvent.completed)
        for index in range(stored):
            for stage in ("base", "final") if base else ("final",):
                key = artifact_key(job_id, index, "png", stage)
                env.store.put(key, PNG, "image/png")
                s.add(
                    Artifact(
                        job_id=job_id,
                        item_index=index,
                        stage=stage,
                        format="png",
                        content_type="image/png",
                        width=64,
                        height=64,
                        seed=index,
                        s3_key=key,
                        size_bytes=len(PNG),
                        sha256="0" * 64,
                    )
                )
    return job_id


def rows(env: Env, job_id: uuid.UUID) -> dict[str, int]:
    """How many rows of each table belong to the job."""
    columns = {
        "jobs": Job.id,
        "job_items": JobItem.job_id,
        "job_events": JobEvent.job_id,
        "artifacts": Artifact.job_id,
        "webhook_deliveries": WebhookDelivery.job_id,
    }
    with env.sessions() as s:
        return {
            name: int(s.scalar(select(func.count()).where(col == job_id)) or 0)
            for name, col in columns.items()
        }


def _counters() -> tuple[float, float]:
    """The Prometheus counters of swept jobs and objects."""
    jobs = REGISTRY.get_sample_value("dreamforge_retention_jobs_deleted_total")
    objects = REGISTRY.get_sample_value("dreamforge_retention_objects_deleted_total")
    return jobs or 0.0, objects or 0.0


def stored(store: ArtifactStore, key: str) -> bool:
    try:
        store.get(key)
    except KeyError:
        return False
    return True


def test_sweep_deletes_exactly_the_expired_finished_jobs(env: Env) -> None:
    expired = {
        "succeeded": make_job(env, "succeeded", age_days=3, base=True),
        "failed": make_job(env, "failed", age_days=2, artifacts=1),
        "canceled": make_job(env, "canceled", age_days=1.5, artifacts=0),
    }
    kept = {
        "recent": make_job(env, "succeeded", age_days=0.5),
        "running": make_job(env, "running", age_days=10, artifacts=1),
        "queued": make_job(env, "queued", age_days=10, artifacts=0),
    }
    keys = {
        name: [artifact_key(job_id, i, "png") for i in range(2)]
        for name, job_id in {**expired, **kept}.items()
    }
    before = {name: rows(env, job_id) for name, job_id in kept.items()}
    counted = _counters()

    result = sweep(env.sessions, env.store, cutoff_for(DAYS))

    # succeeded: 2 items x (base + final); failed: 1 item; canceled: none.
    assert result == SweepResult(jobs=3, objects=5)
    assert _counters() == (counted[0] + 3, counted[1] + 5)
    for name, job_id in expired.items():
        assert set(rows(env, job_id).values()) == {0}, name
        assert not any(stored(env.store, k) for k in keys[name]), name
    assert not stored(env.store, artifact_key(expired["succeeded"], 0, "png", "base"))
    for name, job_id in kept.items():
        assert rows(env, job_id) == before[name], name
    assert stored(env.store, keys["recent"][0]) and stored(env.store, keys["recent"][1])
    assert stored(env.store, keys["running"][0])
    if isinstance(env.store, LocalArtifactStore):
        # The job's folder goes with its last file; `jobs/` stays for the others.
        assert not (env.store.root / "jobs" / str(expired["succeeded"])).exists()
        assert (env.store.root / "jobs").is_dir()

    # Twice is harmless: nothing left to delete, nothing kept is touched.
    assert sweep(env.sessions, env.store, cutoff_for(DAYS)) == SweepResult()
    for name, job_id in kept.items():
        assert rows(env, job_id) == before[name], name


def test_dry_run_lists_what_would_go_and_deletes_nothing(env: Env) -> None:
    old = make_job(env, "succeeded", age_days=3)
    failed = make_job(env, "failed", age_days=2, artifacts=0)
    make_job(env, "succeeded", age_days=0.1)
    make_job(env, "running", age_days=10)

    listed = expired_jobs(env.sessions, cutoff_for(DAYS))

    assert [(j.id, j.status, j.artifacts, j.bytes) for j in listed] == [
        (old, "succeeded", 2, 2 * len(PNG)),
        (failed, "failed", 0, 0),
    ]
    assert listed[0].finished_at < listed[1].finished_at < utcnow() - timedelta(days=DAYS)
    assert rows(env, old)["artifacts"] == 2
    assert stored(env.store, artifact_key(old, 0, "png"))


def test_a_sweep_cut_short_is_finished_by_the_next_one(env: Env) -> None:
    """A crash after the artifact rows went but before the objects and the job did: the job row is
    still there, so the next sweep deletes the objects (keys from the job itself) and the rest."""
    job_id = make_job(env, "succeeded", age_days=3)
    with transaction(env.sessions) as s:
        s.execute(delete(Artifact).where(Artifact.job_id == job_id))
    # And an object a crashed render stored without recording it.
    failed = make_job(env, "failed", age_days=3, artifacts=0)
    env.store.put(artifact_key(failed, 1, "png"), PNG, "image/png")

    result = sweep(env.sessions, env.store, cutoff_for(DAYS))

    assert result == SweepResult(jobs=2, objects=0)
    assert rows(env, job_id)["jobs"] == 0
    assert not stored(env.store, artifact_key(job_id, 0, "png"))
    assert not stored(env.store, artifact_key(job_id, 1, "png"))
    assert not stored(env.store, artifact_key(failed, 1, "png"))


def test_a_backlog_goes_in_batches_and_concurrent_sweeps_do_not_collide(env: Env) -> None:
    jobs = [make_job(env, "succeeded", age_days=2 + i / 10, count=1) for i in range(7)]
    kept = make_job(env, "queued", age_days=10, count=1, artifacts=0)
    cutoff = cutoff_for(DAYS)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: sweep(env.sessions, env.store, cutoff, batch_size=2), range(2)))

    total = results[0] + results[1]
    assert total == SweepResult(jobs=7, objects=7)
    assert all(rows(env, j)["jobs"] == 0 for j in jobs)
    assert rows(env, kept)["jobs"] == 1
    assert sweep(env.sessions, env.store, cutoff) == SweepResult()


def test_a_stopped_sweep_ends_after_the_batch_in_progress(sqlite_env: Env) -> None:
    for i in range(3):
        make_job(sqlite_env, "succeeded", age_days=2 + i, count=1, artifacts=0)
    stop = threading.Event()
    stop.set()

    assert sweep(sqlite_env.sessions, sqlite_env.store, cutoff_for(DAYS), batch_size=2, stop=stop).jobs == 2
    assert sweep(sqlite_env.sessions, sqlite_env.store, cutoff_for(DAYS), batch_size=2).jobs == 1


def test_the_sweeper_runs_in_the_background_and_logs(
    sqlite_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = make_job(sqlite_env, "canceled", age_days=5, artifacts=1)
    sweeper = RetentionSweeper(
        sqlite_env.sessions, sqlite_env.store, days=DAYS, interval_seconds=0.05, first_delay_seconds=0.01
    )
    with caplog.at_level(logging.INFO, logger="dreamforge.jobs.retention"):
        sweeper.start()
        deadline = time.monotonic() + 10
        while sweeper.sweeps < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        sweeper.stop()
    assert sweeper.sweeps >= 2
    assert sweeper.swept == SweepResult(jobs=1, objects=1)
    assert rows(sqlite_env, job_id)["jobs"] == 0
    assert "retention: deleted 1 job(s) and 1 object(s)" in caplog.text


def test_the_sweeper_survives_a_store_outage(sqlite_env: Env, caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(LocalArtifactStore):
        down = True

        def delete_many(self, keys: Sequence[str]) -> None:
            if self.down:
                raise OSError("disk gone")
            super().delete_many(keys)

    assert isinstance(sqlite_env.store, LocalArtifactStore)
    store = Flaky(sqlite_env.store.root, b"secret", 600)
    job_id = make_job(sqlite_env, "failed", age_days=5, artifacts=1)
    key = artifact_key(job_id, 0, "png")
    sweeper = RetentionSweeper(
        sqlite_env.sessions, store, days=DAYS, interval_seconds=0.05, first_delay_seconds=0.01
    )
    with caplog.at_level(logging.WARNING, logger="dreamforge.jobs.retention"):
        sweeper.start()
        try:
            deadline = time.monotonic() + 10
            while "sweep failed" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.02)
            assert "disk gone" in caplog.text
            # The artifact rows went first, so no one is shown the job's images; the job and the bytes
            # wait for the store to come back.
            assert rows(sqlite_env, job_id)["artifacts"] == 0
            assert rows(sqlite_env, job_id)["jobs"] == 1
            assert stored(store, key)
            store.down = False
            while sweeper.swept.jobs == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            sweeper.stop()
    assert rows(sqlite_env, job_id)["jobs"] == 0
    assert not stored(store, key)


@pytest.mark.parametrize("days", [0.0, 7.0])
def test_api_processes_sweep_only_with_a_retention(settings: Settings, days: float) -> None:
    runtime = build_runtime(settings.model_copy(update={"retention_days": days}))
    try:
        sweepers = [s for s in runtime.services if isinstance(s, RetentionSweeper)]
        assert len(sweepers) == (1 if days else 0)
        if days:
            assert (sweepers[0].days, sweepers[0].interval) == (7.0, 3600.0)
    finally:
        runtime.close()


# --- dreamforge gc ---------------------------------------------------------------------------------


def _cli(settings: Settings, *args: str, **env: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        app,
        ["gc", *args],
        env={
            "DF_DATA_DIR": str(settings.data_dir),
            "DF_SIGNING_SECRET": "test-secret",
            "DF_DB_URL": "",
            "DF_MINIO_ENDPOINT": "",
            "DF_RETENTION_DAYS": "0",
            **env,
        },
    )
    return result.exit_code, result.stdout, result.stderr


def test_gc_dry_run_then_gc(sqlite_env: Env, settings: Settings) -> None:
    old = make_job(sqlite_env, "succeeded", age_days=3)
    recent = make_job(sqlite_env, "succeeded", age_days=0.5)
    running = make_job(sqlite_env, "running", age_days=10, artifacts=1)

    code, out, err = _cli(settings, "--dry-run", "--older-than-days", "1")
    assert code == 0, err
    listing = json.loads(out)
    assert listing["dry_run"] is True
    assert listing["jobs"] == [
        {
            "id": str(old),
            "status": "succeeded",
            "finished_at": listing["jobs"][0]["finished_at"],
            "artifacts": 2,
            "bytes": 2 * len(PNG),
        }
    ]
    assert listing["total"] == {"jobs": 1, "artifacts": 2, "bytes": 2 * len(PNG)}
    assert "nothing was deleted" in err
    assert rows(sqlite_env, old)["artifacts"] == 2

    code, out, _ = _cli(settings, "--dry-run", "--output", "table", DF_RETENTION_DAYS="1")
    assert code == 0
    assert str(old)[:8] in out and "succeeded" in out and str(recent)[:8] not in out

    # The default is DF_RETENTION_DAYS.
    code, out, err = _cli(settings, DF_RETENTION_DAYS="1")
    assert code == 0, err
    assert json.loads(out)["deleted"] == {"jobs": 1, "objects": 2}
    assert rows(sqlite_env, old)["jobs"] == 0
    assert not stored(sqlite_env.store, artifact_key(old, 0, "png"))
    assert rows(sqlite_env, recent)["artifacts"] == 2
    assert rows(sqlite_env, running)["jobs"] == 1

    code, out, _ = _cli(settings, "--older-than-days", "1", "-o", "table")
    assert code == 0
    assert "jobs" in out and "objects" in out


def test_gc_without_a_retention_is_a_usage_error(settings: Settings) -> None:
    code, out, err = _cli(settings)
    assert code == 2
    assert out == ""
    assert "--older-than-days" in err
    assert not Path(settings.data_dir / "dreamforge.db").exists()


def test_gc_takes_the_s3_store_from_the_settings(
    sqlite_env: Env, settings: Settings, moto_s3: MotoS3
) -> None:
    s3 = _s3_store(moto_s3)
    old = make_job(Env(sqlite_env.sessions, s3), "failed", age_days=3, artifacts=1)

    code, out, err = _cli(settings, "--older-than-days", "2", **moto_s3.env(s3.bucket))

    assert code == 0, err
    assert json.loads(out)["deleted"] == {"jobs": 1, "objects": 1}
    assert not stored(s3, artifact_key(old, 0, "png"))
    assert set(rows(sqlite_env, old).values()) == {0}
