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


class RequestLimitsMiddleware:
    """Refuses oversized requests with an `ErrorResponse` before any route reads them.

    Headers over `max_header_bytes` are 431 `headers_too_large`; a body over `max_body_bytes` is 413
    `payload_too_large`, whether announced by `Content-Length` or found while a chunked body streams in.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        if sum(len(name) + len(value) + 4 for name, value in headers) > self.max_header_bytes:
            response = error_response(
                431,
                ErrorCode.headers_too_large,
                f"the request's headers exceed {self.max_header_bytes} bytes",
                {"limit": "DF_MAX_HEADER_BYTES", "max": self.max_header_bytes},
            )
            await response(scope, receive, send)
            return
        declared = None
        chunked = False
        for name, value in headers:
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                chunked = True
        if declared is None and not chunked:
            # No Content-Length and no Transfer-Encoding: the request has no body (RFC 9112 6.3), as
            # nearly every GET; reading one here would cost each polled read a receive and a wrapper.
            await self.app(scope, receive, send)
            return
        if declared is not None:
            # The server reads no more than the declared length, so checking it is enough.
            if not declared.isdigit() or int(declared) <= self.max_body_bytes:
                await self.app(scope, receive, send)
            else:
                await self._too_large(scope, receive, send)
            return
        # A chunked body: read it here (it is small by definition), then hand it on as it came.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            ErrorCode.payload_too_large,
            f"the request body exceeds {self.max_body_bytes} bytes",
            {"limit": "DF_MAX_BODY_BYTES", "max": self.max_body_bytes},
        )
        await response(scope, receive, send)
