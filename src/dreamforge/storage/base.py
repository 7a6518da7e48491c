"""The small interface every artifact store implements."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg"}


def artifact_key(job_id: uuid.UUID, item_index: int, fmt: str) -> str:
    """The object key of an item's image: `jobs/{job_id}/{item_index}.{fmt}`."""
    return f"jobs/{job_id}/{item_index}.{fmt}"


class StorageUnavailable(Exception):
    """The store could not be reached, even after retries; nothing was stored."""

    code = "storage_unavailable"


@dataclass(frozen=True)
class SignedUrl:
    """A URL a client can GET until `expires_at`."""

    url: str
    expires_at: datetime


class ArtifactStore(Protocol):
    """Stores artifact bytes under keys and hands out expiring URLs to them."""

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store `data` under `key` atomically: readers see all of it or nothing."""

    def exists(self, key: str) -> bool:
        """True if an object is stored under `key`."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes under `key` (raises `KeyError` if missing)."""
        ...

    def signed_url(self, key: str, base_url: str) -> SignedUrl:
        """A GET URL for `key`; `base_url` is the API's public root, used by stores it serves."""
        ...

    def ping(self) -> None:
        """Raise `StorageUnavailable` if the store cannot be reached (readiness probes)."""
