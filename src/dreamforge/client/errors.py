"""The client's two failures: the API answered with an error, or it could not be reached."""

from __future__ import annotations

import httpx
from pydantic import ValidationError

from dreamforge.api.schemas import ErrorResponse
from dreamforge.error_codes import ErrorCode, http_code


class ApiStatusError(Exception):
    """The API (or an artifact URL) answered with an error; `error` is its `ErrorResponse`.

    Answers that are not an `ErrorResponse` (a proxy's HTML page, S3's XML) are wrapped in one
    whose code is `http_<status>`, so callers handle every error the same way.
    """

    def __init__(self, status: int, error: ErrorResponse) -> None:
        super().__init__(f"{status} {error.code}: {error.message}")
        self.status = status
        self.error = error

    @property
    def code(self) -> str:
        """The stable error code, e.g. `validation_error`."""
        return self.error.code

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiStatusError:
        """Read the error body of a (read) response."""
        try:
            error = ErrorResponse.model_validate_json(response.content)
        except ValidationError:
            text = response.text.strip().replace("\n", " ")
            where = response.request.url.copy_with(query=None)
            error = ErrorResponse(
                code=http_code(response.status_code),
                message=f"{response.reason_phrase or 'error'} from {where}",
                details={"body": text[:500]} if text else {},
                correlation_id=response.headers.get("X-Request-Id"),
            )
        return cls(response.status_code, error)

    @classmethod
    def invalid_body(cls, response: httpx.Response, exc: ValidationError) -> ApiStatusError:
        """A success status whose body is not what the contract says: the URL is not a Dream Forge API."""
        return cls(
            response.status_code,
            ErrorResponse(
                code=ErrorCode.invalid_response,
                message=f"{response.request.url} did not answer as the Dream Forge v1 API does",
                details={"errors": exc.errors(include_url=False, include_context=False)[:5]},
                correlation_id=response.headers.get("X-Request-Id"),
            ),
        )


class ApiUnreachable(Exception):
    """No answer at all: connection refused, DNS failure, or a timeout."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the Dream Forge API at {url}: {reason}")
        self.url = url
        self.reason = reason

    @classmethod
    def from_transport(cls, url: str, exc: httpx.TransportError) -> ApiUnreachable:
        """Name the failure briefly (`connection refused`, `timed out`), never as a traceback."""
        if isinstance(exc, httpx.TimeoutException):
            reason = "timed out"
        elif isinstance(exc, httpx.ConnectError):
            text = str(exc)
            reason = "connection refused" if "refused" in text.lower() else (text or "connection failed")
        else:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return cls(url, reason)
