"""FastAPI dependencies: the process's runtime parts, a per-request database session, the caller.

The light ones are `async`: FastAPI runs a sync dependency on a worker thread, and under many
concurrent requests those thread hops, not the work, set the rate a route serves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from dreamforge.accounts.service import ANYONE, Principal, authenticate, authenticate_async
from dreamforge.db.session import POLL_READ_CONNECTIONS
from dreamforge.runtime import Runtime

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

T = TypeVar("T")
# A polled read's query on the async Postgres pool: (connection, its sync engine's dialect, caller).
AsyncQuery = Callable[["AsyncConnection[Any]", Dialect, Principal], Awaitable[T]]


async def get_runtime(request: Request) -> Runtime:
    """The runtime the app was started with."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    """A session for one request; routes commit what they change."""
    with runtime.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


async def public_base_url(request: Request) -> str:
    """The root URL clients reach this API at (for artifact URLs the API serves)."""
    return str(request.base_url).rstrip("/")


BaseUrlDep = Annotated[str, Depends(public_base_url)]


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer df_live_...`")
_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="An API key, as an alternative to the bearer form"
)


async def get_principal(
    runtime: RuntimeDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    api_key: Annotated[str | None, Security(_api_key_header)],
) -> Principal:
    """Who the request acts for: anyone with `DF_AUTH=off`, else the key it carries (401 without)."""
    if runtime.settings.auth == "off":
        return ANYONE
    key = bearer.credentials if bearer is not None else api_key
    return await run_in_threadpool(_authenticate, runtime, key)


def _authenticate(runtime: Runtime, key: str | None) -> Principal:
    # Checked on every request, so a revoked key is refused from its next request on.
    with runtime.sessions() as session:
        return authenticate(session, runtime.settings.url_signing_key, key)


# What a route that resolves its caller itself (`polled_read`) declares, as `get_principal` would.
CALLER_SECURITY: dict[str, Any] = {"security": [{"HTTPBearer": []}, {"APIKeyHeader": []}]}


def _presented_key(request: Request) -> str | None:
    """The API key `request` carries, read as `_bearer` and `_api_key_header` read it."""
    scheme, credentials = get_authorization_scheme_param(request.headers.get("Authorization"))
    if scheme.lower() == "bearer" and credentials:
        return credentials
    return request.headers.get("X-API-Key")


async def polled_read(
    request: Request, query: Callable[[Connection, Principal], T], query_async: AsyncQuery[T]
) -> T:
    """A polled read route's whole work: the caller, then its query, `query` on a Core connection or
    `query_async` on the async Postgres pool.

    Integrators poll these routes, so they skip what costs more than their query: dependency
    injection (solving the runtime and caller as dependencies takes a third of such a request), a
    second thread hop to authenticate, and an ORM session. With SQLite the work runs on the event
    loop (`Runtime.loop_reads`); with Postgres on the loop too, on the pool the app's lifespan opened
    (`db.session.open_poll_pool`), else in one worker-thread hop on `Runtime.poll_reads`.
    Such a route declares `openapi_extra=CALLER_SECURITY` for the documentation `PrincipalDep` would
    have given it.
    """
    runtime: Runtime = request.app.state.runtime
    key = None if runtime.settings.auth == "off" else _presented_key(request)

    def work(engine: Engine) -> T:
        with engine.connect() as connection:
            if runtime.settings.auth == "off":
                principal = ANYONE
            else:
                # Checked on every request, so a revoked key is refused from its next request on.
                with Session(bind=connection) as session:
                    principal = authenticate(session, runtime.settings.url_signing_key, key)
            return query(connection, principal)

    if runtime.loop_reads is not None:
        return work(runtime.loop_reads)
    pool: AsyncConnectionPool[Any] | None = getattr(request.app.state, "poll_pool", None)
    if pool is not None and runtime.poll_reads is not None:
        # Postgres only: an embedded (SQLite) process never imports the driver's pool.
        from psycopg_pool import PoolTimeout

        dialect = runtime.poll_reads.dialect
        try:
            async with pool.connection() as connection:
                principal = ANYONE
                if runtime.settings.auth != "off":
                    principal = await authenticate_async(
                        connection, dialect, runtime.settings.url_signing_key, key
                    )
                return await query_async(connection, dialect, principal)
        except PoolTimeout as exc:
            # No connection within the pool's timeout: the database is away (503, retry shortly).
            raise OperationalError("connect", None, exc) from exc
        except OperationalError:
            # The database dropped a connection (a restart, an outage): the idle ones are likely
            # dead too. Checked now, so the polls after recovery find live connections instead of
            # failing one by one, as SQLAlchemy's pool is invalidated on a disconnect.
            await pool.check()
            raise
    if runtime.poll_reads is None:
        return await run_in_threadpool(work, runtime.db_engine)
    return await anyio.to_thread.run_sync(work, runtime.poll_reads, limiter=_poll_limiter(request))


def _poll_limiter(request: Request) -> anyio.CapacityLimiter:
    """This app's bound on polled reads in flight: one thread per connection of the poll engine;
    the rest wait on the event loop, not as threads contending for the GIL and the pool."""
    limiter: anyio.CapacityLimiter | None = getattr(request.app.state, "poll_limiter", None)
    if limiter is None:
        limiter = request.app.state.poll_limiter = anyio.CapacityLimiter(POLL_READ_CONNECTIONS)
    return limiter


PrincipalDep = Annotated[Principal, Depends(get_principal)]
