"""Every error leaves the API as an `ErrorResponse` whose `correlation_id` is the request id."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from dreamforge.api.schemas import ErrorResponse
from dreamforge.error_codes import ErrorCode, http_code
from dreamforge.errors import DreamForgeError
from dreamforge.observability.context import request_id_var as request_id_var

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
# `request_id_var` (re-exported above) lives in observability.context, where JSON log lines read it.

# OpenAPI `responses` the routes share: every error body is an ErrorResponse.
Responses = dict[int | str, dict[str, Any]]
ERROR_BODY = {"model": ErrorResponse}
NOT_FOUND: Responses = {404: {**ERROR_BODY, "description": "Not found"}}
UNAUTHORIZED: Responses = {
    401: {
        **ERROR_BODY,
        "description": "`unauthorized` (with `DF_AUTH=required`): no API key, or an invalid or revoked one",
        "headers": {
            "WWW-Authenticate": {
                "description": 'Always `Bearer realm="dreamforge"`',
                "schema": {"type": "string"},
            }
        },
    }
}
INVALID: Responses = {422: {**ERROR_BODY, "description": "Validation error"}}
UNAVAILABLE: Responses = {
    503: {**ERROR_BODY, "description": "A dependency is down: `database_unavailable` (retry shortly)"}
}


class ApiError(DreamForgeError):
    """An error of the HTTP layer itself (a malformed header, a missing resource), raised by routes."""

    def __init__(
        self, status: int, code: ErrorCode, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.status = status


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON `ErrorResponse` carrying the current request id, plus any extra `headers`."""
    rid = request_id_var.get()
    body = ErrorResponse(code=code, message=message, details=details or {}, correlation_id=rid)
    out = dict(headers or {})
    if rid:
        out[REQUEST_ID_HEADER] = rid
    return JSONResponse(status_code=status, content=jsonable_encoder(body), headers=out or None)


def not_found(what: str, ident: object) -> ApiError:
    """A 404 for a missing resource."""
    return ApiError(
        404, ErrorCode.not_found, f"{what} {ident} not found", {"resource": what, "id": str(ident)}
    )


# HTTP errors the framework raises itself (an unknown route, a wrong method); others are `http_<status>`.
_HTTP_CODES = {
    400: ErrorCode.bad_request,
    401: ErrorCode.unauthorized,
    403: ErrorCode.forbidden,
    404: ErrorCode.not_found,
    405: ErrorCode.method_not_allowed,
    406: ErrorCode.not_acceptable,
    413: ErrorCode.payload_too_large,
    415: ErrorCode.unsupported_media_type,
}


def _validation_details(exc: RequestValidationError) -> dict[str, Any]:
    errors = []
    for err in exc.errors():
        entry = {
            "loc": [str(p) for p in err.get("loc", ())],
            "field": ".".join(str(p) for p in err.get("loc", ())[1:]) or None,
            "msg": err.get("msg"),
            "type": err.get("type"),
        }
        # Never null on the wire: an error of the whole body (no field) leaves `field` out.
        errors.append({key: value for key, value in entry.items() if value is not None})
    return {"errors": errors}


def install_error_handlers(app: FastAPI) -> None:
    """Map framework and domain exceptions to `ErrorResponse`s."""

    @app.exception_handler(DreamForgeError)
    async def _domain(_: Request, exc: DreamForgeError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        first = details["errors"][0] if details["errors"] else {}
        where = first.get("field") or ".".join(first.get("loc", [])) or "request"
        message = f"invalid request: {where}: {first.get('msg', 'invalid value')}"
        if len(details["errors"]) > 1:
            message += f" (and {len(details['errors']) - 1} more)"
        return error_response(422, ErrorCode.validation_error, message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code) or http_code(exc.status_code)
        message = str(exc.detail) if exc.detail else code.replace("_", " ")
        return error_response(exc.status_code, code, message)

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.error("database unavailable: %s", exc.orig)
        return error_response(
            503,
            ErrorCode.database_unavailable,
            "the database is unreachable; retry shortly",
            {"component": "database"},
        )
