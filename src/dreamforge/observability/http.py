"""HTTP metrics: latency and responses of every request, by method, route template and status."""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dreamforge.observability.metrics import HTTP_RESPONSES, HTTP_SECONDS, UNMATCHED_ROUTE

# Methods outside this set are counted as `other`: a client must not be able to mint series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Scope) -> str:
    """The template of the route that served the request (`/v1/jobs/{id}`), or `unmatched`.

    The router leaves the route in the scope. A route of an included router may know only its own
    path (`/jobs/{id}`, FastAPI >= 0.16x); the prefix it was included under is then the part of the
    request path before the part the route matched, which is static text (`/v1`).
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    regex = getattr(route, "path_regex", None)
    if not isinstance(template, str) or not isinstance(regex, re.Pattern):
        return UNMATCHED_ROUTE
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    for cut in (i for i, char in enumerate(path) if char == "/"):
        if regex.match(path[cut:]):
            return path[:cut] + template
    return template


def _series(kept: dict[tuple[str, ...], Any], metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up in `kept` after the first time."""
    series = kept.get(labels)
    if series is None:
        series = kept[labels] = metric.labels(*labels)
    return series


class HttpMetricsMiddleware:
    """Pure ASGI middleware (streaming-safe) that times each request once its response has ended.

    The route label is the matched route's template (`/v1/jobs/{id}`), which the router leaves in
    the request scope; a raw path would create a series per job.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The labelled series, kept: prometheus_client validates and locks on every `labels()` call,
        # a cost every polled request paid twice. Bounded by methods x route templates x statuses.
        self._seconds: dict[tuple[str, ...], Any] = {}
        self._responses: dict[tuple[str, ...], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            method = scope.get("method", "")
            method = method if method in _METHODS else "other"
            route = route_template(scope)
            _series(self._seconds, HTTP_SECONDS, method, route).observe(time.perf_counter() - started)
            _series(self._responses, HTTP_RESPONSES, method, route, str(status)).inc()
