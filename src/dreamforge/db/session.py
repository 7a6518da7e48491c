"""Engine and session factories for SQLite (embedded) and Postgres (distributed)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

# session.info key of the job ids whose news waits for the transaction to commit.
_ANNOUNCE = "dreamforge.announce"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while the in-process worker writes; busy_timeout turns
    # brief writer contention into waiting instead of "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def create_db_engine(url: str) -> Engine:
    """Create an engine for `url`, tuned for its dialect."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error."""
    with factory() as session, session.begin():
        yield session


def announce(session: Session, job_id: uuid.UUID) -> None:
    """Have `job_id` announced once this session's transaction commits; a rollback drops it."""
    session.info.setdefault(_ANNOUNCE, set()).add(job_id)


def announce_commits(factory: sessionmaker[Session], publish: Callable[[uuid.UUID], None]) -> None:
    """Call `publish(job_id)` for every job announced in a transaction of `factory`, after it commits.

    Readers wake only for rows they can already see, and news of work rolled back is never sent.
    """

    def after_commit(session: Session) -> None:
        for job_id in session.info.pop(_ANNOUNCE, ()):
            try:
                publish(job_id)
            except Exception as exc:
                # The rows are committed; streams find them on their next poll.
                log.warning("job %s: news not announced (%s)", job_id, exc)

    def after_rollback(session: Session) -> None:
        session.info.pop(_ANNOUNCE, None)

    event.listen(factory, "after_commit", after_commit)
    event.listen(factory, "after_rollback", after_rollback)
