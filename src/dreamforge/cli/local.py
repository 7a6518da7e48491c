"""The local database the commands that bypass the API work on (models, API keys, gc), migrated first."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from dreamforge.config import Settings

if TYPE_CHECKING:
    # Imported when a command runs, so `--help` starts without SQLAlchemy.
    from sqlalchemy.orm import Session, sessionmaker


@contextmanager
def open_database(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on `settings`' database (`DF_DB_URL`), migrated to head; disposed afterwards."""
    from dreamforge.db.migrate import upgrade_to_head
    from dreamforge.db.session import create_db_engine, make_session_factory

    settings.ensure_dirs()
    upgrade_to_head(settings.database_url)
    engine = create_db_engine(settings.database_url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


@contextmanager
def local_registry() -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    """This machine's settings and sessions on its database."""
    settings = Settings()
    with open_database(settings) as sessions:
        yield settings, sessions
