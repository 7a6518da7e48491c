"""Engine and session factories for SQLite (embedded) and Postgres (distributed)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import SingletonThreadPool

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

# Connections each Postgres engine of a process may hold: kept, and beyond them while busy.
_POSTGRES_POOL: dict[str, Any] = {"pool_size": 10, "max_overflow": 10}
# Connections of the polled-read engine, and so the polled reads run at once (api/deps.py): kept
# open, never more. Overflow connections were opened and closed under a crowd of pollers, each
# a Postgres backend started and stopped for one read.
POLL_READ_CONNECTIONS = 4
# Seconds a polled read waits for a connection of the async pool; then 503 database_unavailable
# (during an outage the pool reconnects in the background meanwhile).
POLL_POOL_TIMEOUT_SECONDS = 2.0
# session.info key of the values that wait for the transaction to commit, by channel.
_PENDING = "dreamforge.after_commit"
# The channel of job ids whose streams wake once their events are committed.
ANNOUNCE = "announce"


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
    return create_engine(url, pool_pre_ping=True, **_POSTGRES_POOL)


def create_loop_read_engine(url: str) -> Engine | None:
    """For a SQLite file, an engine for reads run on the API's event loop itself; None otherwise.

    A polled read of one row costs tens of microseconds in SQLite, while handing it to a worker
    thread and back costs several times that in thread switches. On the loop it is safe because WAL
    readers never wait for the writer, and because each thread has a connection of its own
    (`SingletonThreadPool`): no checkout can wait for a connection another thread holds. Postgres
    reads wait on the network, so they stay on worker threads (None).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    # No rollback when a connection goes back to the pool: the driver opens no transaction for a
    # SELECT (it begins one only before a write), so a read leaves nothing to roll back.
    engine = create_engine(
        url,
        poolclass=SingletonThreadPool,
        pool_reset_on_return=None,
        connect_args={"check_same_thread": False},
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def create_poll_read_engine(url: str) -> Engine | None:
    """For Postgres, the engine of the API's polled reads (job status and progress); None otherwise.

    A read on the main engine made three round trips: the pool's liveness ping, the query, and the
    rollback that ends its transaction. In autocommit a read opens no transaction, so nothing is rolled
    back, and there is no ping: after a database restart the first read on a dead connection fails
    (503 `database_unavailable`, which clients retry) and has the pool replace every connection.
    """
    if make_url(url).get_backend_name() == "sqlite":
        return None
    return create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        pool_reset_on_return=None,
        pool_size=POLL_READ_CONNECTIONS,
        max_overflow=0,
    )


async def open_poll_pool(url: str) -> AsyncConnectionPool[Any] | None:
    """For Postgres through psycopg, the API's pool for polled reads on its event loop; else None.

    On the loop a read costs no thread hops: a crowd of pollers got 2.3-2.5x the reads per second of
    the worker-thread path in a bare ASGI app here. Connections are autocommit, as the poll engine's,
    and made in the background: the API starts while the database is away.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or parsed.get_driver_name() != "psycopg":
        return None
    from psycopg_pool import AsyncConnectionPool

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        parsed.set(drivername="postgresql").render_as_string(hide_password=False),
        min_size=POLL_READ_CONNECTIONS,
        max_size=POLL_READ_CONNECTIONS,
        kwargs={"autocommit": True},
        timeout=POLL_POOL_TIMEOUT_SECONDS,
        name="polled-reads",
        open=False,
    )
    await pool.open(wait=False)
    return pool


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error."""
    with factory() as session, session.begin():
        yield session


def after_commit(session: Session, channel: str, value: Hashable) -> None:
    """Hand `value` to `channel`'s callback once this session's transaction commits; a rollback drops it."""
    session.info.setdefault(_PENDING, {}).setdefault(channel, set()).add(value)


def on_commits(factory: sessionmaker[Session], channel: str, callback: Callable[[Any], None]) -> None:
    """Call `callback(value)` for every value `after_commit` left on `channel` in a transaction of
    `factory`, once it commits: readers only hear of rows they can already see, never of rolled-back work.

    The callbacks of one commit run in the committing thread, so they must be quick (wake a thread,
    publish a message); one that raises is logged, since the rows are committed whatever it does.
    """

    def run(session: Session) -> None:
        for value in session.info.get(_PENDING, {}).pop(channel, ()):
            try:
                callback(value)
            except Exception as exc:
                log.warning("%s: %s not passed on after commit (%s)", channel, value, exc)

    def drop(session: Session) -> None:
        session.info.get(_PENDING, {}).pop(channel, None)

    event.listen(factory, "after_commit", run)
    event.listen(factory, "after_rollback", drop)


def announce(session: Session, job_id: uuid.UUID) -> None:
    """Have `job_id` announced once this session's transaction commits; a rollback drops it."""
    after_commit(session, ANNOUNCE, job_id)


def announce_commits(factory: sessionmaker[Session], publish: Callable[[uuid.UUID], None]) -> None:
    """Call `publish(job_id)` for every job announced in a transaction of `factory`, after it commits.

    Streams re-read the database when woken, so a lost announcement only delays them one poll.
    """
    on_commits(factory, ANNOUNCE, publish)
