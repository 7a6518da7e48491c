"""FastAPI dependencies: the process's runtime parts, a per-request database session, the caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from dreamforge.accounts.service import ANYONE, Principal, authenticate
from dreamforge.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    """The runtime the app was started with."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    """A session for one request; routes commit what they change."""
    with runtime.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def public_base_url(request: Request) -> str:
    """The root URL clients reach this API at (for artifact URLs the API serves)."""
    return str(request.base_url).rstrip("/")


BaseUrlDep = Annotated[str, Depends(public_base_url)]


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer df_live_...`")
_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="An API key, as an alternative to the bearer form"
)


def get_principal(
    runtime: RuntimeDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    api_key: Annotated[str | None, Security(_api_key_header)],
) -> Principal:
    """Who the request acts for: anyone with `DF_AUTH=off`, else the key it carries (401 without)."""
    if runtime.settings.auth == "off":
        return ANYONE
    key = bearer.credentials if bearer is not None else api_key
    # Checked on every request, so a revoked key is refused from its next request on.
    with runtime.sessions() as session:
        return authenticate(session, runtime.settings.url_signing_key, key)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
