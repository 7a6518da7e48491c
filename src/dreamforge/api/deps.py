"""FastAPI dependencies: the process's runtime parts, a per-request database session, the caller.

The light ones are `async`: FastAPI runs a sync dependency on a worker thread, and under many
concurrent requests those thread hops, not the work, set the rate a route serves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, TypeVar

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from dreamforge.accounts.service import ANYONE, Principal, authenticate
from dreamforge.runtime import Runtime

T = TypeVar("T")


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


def read(runtime: Runtime, query: Callable[[Session], T]) -> T:
    """Run `query` in a session of its own and close it: a read route's whole database work, done in
    one worker-thread hop (each sync dependency or route would be a hop of its own)."""
    with runtime.sessions() as session:
        return query(session)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
