"""FastAPI dependencies: the process's runtime parts and a per-request database session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

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
