"""HMAC signatures for the local store's expiring artifact URLs.

Written by hand because it is ten lines over `hmac`: a library would add a dependency
for no safety gain. The signature covers the key and the expiry, so neither can be edited.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError


class SignatureError(DreamForgeError):
    """An artifact URL whose signature is wrong or whose time has passed."""

    code = ErrorCode.invalid_signature
    status = 403

    def __init__(self, code: ErrorCode, message: str, key: str) -> None:
        super().__init__(message, code=code, details={"key": key})


def sign(key: str, expires: int, secret: bytes) -> str:
    """The hex signature of `key` valid until the UNIX time `expires`."""
    return hmac.new(secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()


def verify(key: str, expires: int, signature: str, secret: bytes, now: float | None = None) -> None:
    """Raise `SignatureError` unless `signature` is valid for `key` and `expires` is in the future."""
    if not hmac.compare_digest(sign(key, expires, secret), signature):
        raise SignatureError(
            ErrorCode.invalid_signature, "the URL's signature does not match; request a fresh URL", key
        )
    if (time.time() if now is None else now) >= expires:
        raise SignatureError(
            ErrorCode.url_expired, "the URL has expired; list the job's artifacts for a fresh one", key
        )
