"""Bring a database's schema to the newest Alembic revision."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import make_url

from dreamforge.db.session import create_db_engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any constant shared by every Dream Forge process: API replicas and workers may start together.
_PG_MIGRATION_LOCK = 0x0DF0_0001


def alembic_config(db_url: str) -> Config:
    """An Alembic config for `db_url` that needs no alembic.ini on disk."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser treats % as interpolation; URLs may contain escaped characters.
    cfg.set_main_option("sqlalchemy.url", db_url.replace("%", "%%"))
    return cfg


def upgrade_to_head(db_url: str) -> None:
    """Apply every pending migration; on Postgres, one process at a time."""
    cfg = alembic_config(db_url)
    if make_url(db_url).get_backend_name() != "postgresql":
        command.upgrade(cfg, "head")
        return
    engine = create_db_engine(db_url)
    try:
        with engine.connect() as conn:
            # A session-level advisory lock serialises concurrent starters; the losers then find
            # the schema at head and do nothing.
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            try:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
    finally:
        engine.dispose()
