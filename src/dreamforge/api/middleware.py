"""Request ids on every response, and a last-resort 500 that is still an `ErrorResponse`."""

from __future__ import annotations

import logging
import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dreamforge.api.errors import REQUEST_ID_HEADER, error_response, request_id_var
from dreamforge.error_codes import ErrorCode

log = logging.getLogger(__name__)

# Echo only ids that are safe to put back into a header and a log line.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,200}$")


class RequestIdMiddleware:
    """Pure ASGI middleware (streaming-safe, unlike BaseHTTPMiddleware) that tags each request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                sent = value.decode("latin-1")
                break
        rid = sent if sent and _SAFE_ID.match(sent) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception(
                "unhandled error in %s %s (request %s)", scope.get("method"), scope.get("path"), rid
            )
            if started:
                raise
            response = error_response(
                500, ErrorCode.internal_error, "an internal error occurred; quote the correlation_id"
            )
            await response(scope, receive, send)
        finally:
            request_id_var.reset(token)
