"""The small interface every artifact store implements."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError


class ImageFormat(StrEnum):
    """Encodings for artifacts."""

    png = "png"
    jpg = "jpg"


CONTENT_TYPES = {ImageFormat.png.value: "image/png", ImageFormat.jpg.value: "image/jpeg"}


def artifact_key(job_id: uuid.UUID, item_index: int, fmt: str, stage: str = "final") -> str:
    """The object key of an item's image: `jobs/{job_id}/{item_index}.{fmt}` (`-base` before the
    suffix for the image before upscaling)."""
    suffix = "" if stage == "final" else f"-{stage}"
    return f"jobs/{job_id}/{item_index}{suffix}.{fmt}"


class StorageUnavailable(DreamForgeError):
    """The store could not be reached, even after retries; nothing was stored."""

    code = ErrorCode.storage_unavailable
    status = 503


@dataclass(frozen=True)
class SignedUrl:
    """A URL a client can GET until `expires_at`."""

    url: str
    expires_at: datetime


class ArtifactStore(Protocol):
    """Stores artifact bytes under keys and hands out expiring URLs to them."""

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store `data` under `key` atomically: readers see all of it or nothing."""

    def get(self, key: str) -> bytes:
        """The bytes under `key` (raises `KeyError` if missing)."""
        ...

    def signed_url(self, key: str, base_url: str) -> SignedUrl:
        """A GET URL for `key`; `base_url` is the API's public root, used by stores it serves."""
        ...

    def ping(self) -> None:
        """Raise `StorageUnavailable` if the store cannot be reached (readiness probes)."""

    def delete(self, key: str) -> None:
        """Remove the object under `key`; a missing one is fine (raises `StorageUnavailable` if the
        store cannot be reached)."""


@runtime_checkable
class BatchDeletingStore(ArtifactStore, Protocol):
    """A store that removes many objects in few requests (S3's DeleteObjects)."""

    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove every object of `keys`, like `delete` on each; missing ones are fine."""


@runtime_checkable
class FileServingStore(ArtifactStore, Protocol):
    """A store whose signed URLs point at the API itself, which serves the bytes (`/v1/files`)."""

    def open_signed(self, key: str, expires: int, signature: str) -> bytes:
        """The bytes under `key` if the URL's signature holds and has not expired.

        Raises `SignatureError` for a bad or expired URL and `KeyError` when nothing is stored.
        """
        ...
