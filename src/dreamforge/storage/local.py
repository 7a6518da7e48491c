"""Artifacts on local disk, served by the API itself behind signed, expiring URLs."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlencode

from dreamforge.storage.base import SignedUrl, StorageUnavailable
from dreamforge.storage.signing import sign, verify


class LocalArtifactStore:
    """Stores objects as files under `root`, keyed by relative path."""

    def __init__(self, root: Path, secret: bytes, ttl_seconds: int) -> None:
        self.root = root
        self._secret = secret
        self._ttl = ttl_seconds

    def path_for(self, key: str) -> Path:
        """The file of `key`; refuses keys that would escape the root."""
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise KeyError(key)
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write via a temporary file, fsync and rename, so a crash never leaves half an image."""
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        """The file's bytes."""
        path = self.path_for(key)
        if not path.is_file():
            raise KeyError(key)
        return path.read_bytes()

    def delete(self, key: str) -> None:
        """Remove the file (a missing one is fine), then its folders left empty below the top one.

        The top folder (`jobs/`) stays: a `put` of another key may be creating its subfolder.
        """
        path = self.path_for(key)
        path.unlink(missing_ok=True)
        root = self.root.resolve()
        parent = path.parent
        while parent != root and parent.parent != root:
            try:
                parent.rmdir()
            except OSError:  # not empty (or already gone)
                break
            parent = parent.parent

    def delete_many(self, keys: Sequence[str]) -> None:
        """`delete` each key."""
        for key in keys:
            self.delete(key)

    def open_signed(self, key: str, expires: int, signature: str) -> bytes:
        """The file's bytes, if the URL was signed with this store's secret and is still valid."""
        verify(key, expires, signature, self._secret)
        return self.get(key)

    def ping(self) -> None:
        """Raise `StorageUnavailable` unless the root directory is writable."""
        if not os.access(self.root, os.W_OK):
            raise StorageUnavailable(f"artifact directory {self.root} is not writable")

    def signed_url(self, key: str, base_url: str) -> SignedUrl:
        """`{base_url}/v1/files/{key}?expires=…&sig=…`."""
        expires = int(time.time()) + self._ttl
        query = urlencode({"expires": expires, "sig": sign(key, expires, self._secret)})
        url = f"{base_url.rstrip('/')}/v1/files/{quote(key)}?{query}"
        return SignedUrl(url=url, expires_at=datetime.fromtimestamp(expires, UTC))
