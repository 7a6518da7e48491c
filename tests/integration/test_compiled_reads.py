"""The polled reads on the driver's cursor give what SQLAlchemy's own execution gives, on both databases."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import pg_database, register_tiny, stage_job
from sqlalchemy import Engine, column, select, table
from sqlalchemy.exc import DBAPIError

from dreamforge.db.compiled import CompiledSelect
from dreamforge.db.session import (
    create_db_engine,
    create_loop_read_engine,
    create_poll_read_engine,
    make_session_factory,
    transaction,
)
from dreamforge.db.tables import Job, JobItem
from dreamforge.jobs import repository as jobs_repo


@contextmanager
def _staged(
    url: str, reads: Callable[[str], Engine | None], model: Path
) -> Iterator[tuple[Engine, Engine, uuid.UUID]]:
    register_tiny(url, model)  # migrates the database first
    main, polled = create_db_engine(url), reads(url)
    assert polled is not None
    sessions = make_session_factory(main)
    job_id = stage_job(sessions, count=3, webhook="https://example.com/hook")
    with transaction(sessions) as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.status, job.error_code, job.error_message = "failed", "gpu_oom", "out of memory"
    try:
        yield main, polled, job_id
    finally:
        polled.dispose()
        main.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dir: Path
) -> Iterator[tuple[Engine, Engine, uuid.UUID]]:
    """(main engine, the polled reads' engine, a failed job with a webhook and 3 items) per database."""
    if request.param == "sqlite":
        with _staged(f"sqlite:///{tmp_path / 'df.db'}", create_loop_read_engine, tiny_model_dir) as staged:
            yield staged
    else:
        with pg_database() as url, _staged(url, create_poll_read_engine, tiny_model_dir) as staged:
            yield staged


def test_a_job_record_holds_what_the_orm_reads(database: tuple[Engine, Engine, uuid.UUID]) -> None:
    main, polled, job_id = database
    with polled.connect() as connection:
        record = jobs_repo.job_record(connection, job_id)
        assert record is not None
        items = list(record.items)
    with make_session_factory(main)() as s:
        job = s.get(Job, job_id)
        assert job is not None
        for field in ("id", "type", "status", "params", "count", "error_code", "created_at", "updated_at"):
            assert getattr(record, field) == getattr(job, field), field
        assert record.created_at.tzinfo is not None
        assert isinstance(record.id, uuid.UUID)
        assert "https://example.com/hook" in str(record.params)
        rows = s.scalars(select(JobItem).where(JobItem.job_id == job_id).order_by(JobItem.item_index)).all()
        assert [(i.item_index, i.status, i.seed) for i in items] == [
            (r.item_index, r.status, r.seed) for r in rows
        ]


def test_an_unknown_job_is_none(database: tuple[Engine, Engine, uuid.UUID]) -> None:
    _main, polled, _job_id = database
    with polled.connect() as connection:
        assert jobs_repo.job_record(connection, uuid.uuid4()) is None


def test_a_driver_error_surfaces_as_sqlalchemys_own(database: tuple[Engine, Engine, uuid.UUID]) -> None:
    # The routes map SQLAlchemy's errors (an OperationalError is 503 database_unavailable); a bare
    # driver error would have been a 500.
    _main, polled, _job_id = database
    broken = CompiledSelect(select(column("id")).select_from(table("no_such_table")))
    with polled.connect() as connection, pytest.raises(DBAPIError) as caught:
        broken.rows(connection, {})
    assert "no_such_table" in str(caught.value)


def test_on_the_async_pool_a_job_record_and_a_driver_error_are_as_on_the_sync_cursor(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    import asyncio

    import psycopg

    with pg_database() as url, _staged(url, create_poll_read_engine, tiny_model_dir) as staged:
        _main, polled, job_id = staged
        with polled.connect() as connection:
            record = jobs_repo.job_record(connection, job_id)
            assert record is not None
            expected = (record, list(record.items))
        broken = CompiledSelect(select(column("id")).select_from(table("no_such_table")))

        async def read() -> tuple[jobs_repo.JobRecord | None, jobs_repo.JobRecord | None, str]:
            conninfo = url.replace("postgresql+psycopg://", "postgresql://")
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as connection:
                found = await jobs_repo.job_record_async(connection, polled.dialect, job_id)
                unknown = await jobs_repo.job_record_async(connection, polled.dialect, uuid.uuid4())
                with pytest.raises(DBAPIError) as caught:
                    await broken.rows_async(connection, polled.dialect, {})
                return found, unknown, str(caught.value)

        found, unknown, error = asyncio.run(read())
    assert found is not None and unknown is None
    assert (found, list(found.items)) == expected
    assert "no_such_table" in error
