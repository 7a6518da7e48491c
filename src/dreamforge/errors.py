"""The one root of every error a user can act on.

Each subclass names its stable `code` (an `ErrorCode`, listed in `error_codes.CATALOG`) and the
HTTP `status` it maps to, so the API has one handler for all of them and workers record the same
code on a failed job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dreamforge.error_codes import ErrorCode


class DreamForgeError(Exception):
    """An error with a stable, machine-readable `code`, an HTTP `status` and structured `details`."""

    code: ErrorCode = ErrorCode.internal_error
    status: int = 500

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: dict[str, Any] = dict(details or {})
        # HTTP headers the API adds to the error response (e.g. `Retry-After`); empty for most errors.
        self.headers: dict[str, str] = dict(headers or {})

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take other arguments than `args`: rebuild from the state, so the error pickles
        # (Celery and process pools ship exceptions between processes).
        return (_restore, (type(self), self.args, self.__dict__))


def _restore(cls: type[DreamForgeError], args: tuple[Any, ...], state: dict[str, Any]) -> DreamForgeError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error
