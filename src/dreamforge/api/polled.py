"""The polled reads, served ahead of FastAPI's routing.

Integrators poll `GET /v1/jobs/{id}` and `GET /v1/jobs/{id}/progress` many times a second, and for
such a request FastAPI's routing, dependency solving and exception layers cost more than the read
itself. This middleware calls those two route functions directly for the answer a poll nearly always
gets: any failure (an unknown, foreign or malformed id, a missing key, an unreachable database) falls
through to the routes, whose handlers write the ErrorResponse the contract documents. The routes stay
the one implementation and the OpenAPI's source; only the way to them is shorter.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

# A polled route function: the job id and the request, to its 200 response (raises otherwise).
PolledEndpoint = Callable[[uuid.UUID, Request], Awaitable[Response]]

# Only the canonical spelling: another one pydantic might read differently is the route's to judge.
_CANONICAL_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class PolledRoute:
    """A polled route by its full template; `path` and `path_regex` are what the metrics label read."""

    path: str
    path_regex: re.Pattern[str]
    endpoint: PolledEndpoint


class PolledReadsMiddleware:
    """Pure ASGI middleware that serves successful polls of `routes` (template, route function)."""

    def __init__(self, app: ASGIApp, routes: Sequence[tuple[str, PolledEndpoint]]) -> None:
        self.app = app
        self.routes = [PolledRoute(path, compile_path(path)[0], endpoint) for path, endpoint in routes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            for route in self.routes:
                match = route.path_regex.match(path)
                if match is None:
                    continue
                response = await _answer(route, match["id"], scope, receive)
                if response is not None:
                    scope["route"] = route
                    await response(scope, receive, send)
                    return
                break
        await self.app(scope, receive, send)


async def _answer(route: PolledRoute, raw_id: str, scope: Scope, receive: Receive) -> Response | None:
    """The route's response, or None where the route itself must answer."""
    if not _CANONICAL_ID.fullmatch(raw_id):
        return None
    try:
        return await route.endpoint(uuid.UUID(raw_id), Request(scope, receive))
    except Exception:
        # Every refusal is the route's to write, through the app's error handlers: asked again
        # there, the read fails the same way (a rare, and never a successful, poll pays twice).
        return None
