"""Alembic environment: one set of migrations for SQLite and Postgres."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from dreamforge.db.session import create_db_engine
from dreamforge.db.tables import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    # `alembic` run from the repo root: use the same settings as the service.
    from dreamforge.config import Settings

    return os.environ.get("DF_DB_URL") or Settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    # Batch mode lets later ALTERs run on SQLite, which cannot alter columns in place.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        # upgrade_to_head holds a lock on this connection while migrating.
        _run(given)
        return
    engine = create_db_engine(_url())
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
