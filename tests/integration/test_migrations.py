"""One set of Alembic migrations builds the same schema on SQLite and Postgres."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from dreamforge.db.migrate import upgrade_to_head
from dreamforge.db.session import create_db_engine
from dreamforge.db.tables import Base

TABLES = {"models", "jobs", "job_items", "artifacts", "job_events", "alembic_version"}


def _check(url: str) -> None:
    upgrade_to_head(url)
    upgrade_to_head(url)  # idempotent: a restart re-runs it
    engine = create_db_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"tables.py and the migrations disagree: {diff}"
    finally:
        engine.dispose()


def test_sqlite_schema_matches_models(tmp_path: Path) -> None:
    _check(f"sqlite:///{tmp_path / 'df.db'}")


def test_postgres_schema_matches_models(pg_url: str) -> None:
    _check(pg_url)
