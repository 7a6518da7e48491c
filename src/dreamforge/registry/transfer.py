"""Resumable, verified HTTP file transfer: the byte-moving half of the model downloader.

Written on httpx and tenacity rather than delegated to `huggingface_hub.hf_hub_download` because
that function (2.x) writes to a per-process temporary file and deletes it on failure: a 6 GB
checkpoint interrupted at 90% would start over. Here the partial file survives the process, and
every try (in this run or the next) resumes it with an HTTP Range request. huggingface_hub still
does everything Hub-specific (see `registry/huggingface.py`); Civitai uses this same path.

A file is written as `<name>.part`, hashed as it arrives, and renamed into place only once its
size and SHA-256 (and git blob id, for small Hub files) match what the source publishes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError
from dreamforge.registry.formats import (
    UnsafeFile,
    check_safetensors_header,
    disposition_filename,
    error_page_summary,
    looks_like_error_page,
)

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
# httpcore reads a response 64 KiB per socket read and offers no setting for it; at that size a
# multi-GB checkpoint spends more CPU in per-read Python overhead than in hashing and writing, and
# downloads ran at 0.57 of curl's throughput from the same loopback server (bench/downloads.py).
# A larger read only returns what the socket has, so small responses elsewhere are unaffected.
# tests/unit/test_transfer_reads.py fails if an httpcore release drops the attribute.
httpcore.HTTP11Connection.READ_NUM_BYTES = _CHUNK
# Received pieces are written to disk in slices of this size: on Linux 6.x (large page-cache folios)
# a 1 MiB write() ran 2-5x slower than the same bytes in 64 KiB writes, and downloads fell to
# 0.3-0.5 of curl's throughput, which writes 16 KiB at a time (bench/downloads.py).
_WRITE_SLICE = 64 * 1024
_MAX_REDIRECTS = 10
_MAX_RETRY_AFTER = 120.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(DreamForgeError):
    """A download failed in a way the user must act on; `code` is stable for scripts."""

    code = ErrorCode.download_failed
    # The failure is the source's (or the way to it), not the request's.
    status = 502

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message, details={"url": url} if url else None)
        self.url = url


class AuthRequired(DownloadError):
    """The source wants a token (or a better one)."""

    code = ErrorCode.auth_required


class RemoteNotFound(DownloadError):
    """The repo, revision, version or file does not exist at the source."""

    code = ErrorCode.not_found


class ChecksumMismatch(DownloadError):
    """The bytes received are not the file the source publishes."""

    code = ErrorCode.checksum_mismatch


class NotAModel(DownloadError):
    """The server sent an error page, or something other than a safetensors checkpoint."""

    code = ErrorCode.not_a_model


class _Retryable(Exception):
    """A failure another try may fix (dropped connection, 429, 5xx); the part file is kept."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TransferFailed(DownloadError):
    """Every try failed with a transient error."""

    code = ErrorCode.transfer_failed


class ProgressSink(Protocol):
    """Where a transfer reports progress: a Rich bar, plain log lines, or nothing."""

    def start(self, name: str, total: int | None, done: int) -> None:
        """A file starts (or resumes with `done` bytes already on disk)."""

    def advance(self, n: int) -> None:
        """`n` more bytes arrived."""

    def finish(self) -> None:
        """The current file is complete."""

    def note(self, message: str) -> None:
        """Something a user may want to know: a resume, a retry."""


class SilentProgress:
    """A sink that reports nothing (`-q`)."""

    def start(self, name: str, total: int | None, done: int) -> None:
        """Ignore."""

    def advance(self, n: int) -> None:
        """Ignore."""

    def finish(self) -> None:
        """Ignore."""

    def note(self, message: str) -> None:
        """Ignore."""


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch and what the source says it is."""

    path: str  # relative path under the install folder
    url: str
    size: int | None = None
    sha256: str | None = None
    git_sha1: str | None = None  # small Hub files are identified by their git blob id
    # Sent only to a URL on `auth_host` (scheme://host[:port]); never along a redirect elsewhere.
    auth_headers: Mapping[str, str] = field(default_factory=dict)
    auth_host: str | None = None
    # What to tell a user the source refused: which token to set.
    auth_hint: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FetchedFile:
    """A file that is complete and verified on disk."""

    path: Path
    size: int
    sha256: str
    fetched_bytes: int  # bytes received in this run (resumed bytes are not fetched again)
    disposition_name: str | None


def backoff(initial: float, maximum: float = 30.0) -> wait_exponential_jitter:
    """Exponential backoff with jitter, starting near `initial` seconds (tests pass a tiny one)."""
    return wait_exponential_jitter(multiplier=initial, jitter=initial, max=maximum)


def api_retrying(
    attempts: int, backoff_initial: float, transient: Callable[[BaseException], bool]
) -> Retrying:
    """How a source's metadata calls retry: `attempts` tries, backing off, on `transient` errors only."""
    return Retrying(
        stop=stop_after_attempt(attempts),
        wait=backoff(backoff_initial),
        retry=retry_if_exception(transient),
        reraise=True,
    )


def origin(url: str) -> str:
    """`scheme://host[:port]` of a URL, the unit a token is scoped to."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file: what the Hub publishes for files not stored in LFS."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# Arriving pieces are hashed on a thread of this one: hashlib lets go of the interpreter lock while
# it hashes, so the digest runs on another core while the next piece is received and written. Hashed
# inline, it took half the time of a loopback download that curl (which hashes nothing) made in one.
_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="download-sha256")
# Pieces (each up to _CHUNK) that may wait for the hasher before the download waits for it.
_HASH_BACKLOG = 16


class _PartFile:
    """A `.part` file and the SHA-256 of its bytes, kept up to date as bytes are appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._digest = hashlib.sha256()
        self._hashed = 0
        self._hashing: deque[Future[None]] = deque()
        self.received = 0  # bytes that arrived over the network in this run, kept or not

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def discard(self) -> None:
        self._settle()
        self.path.unlink(missing_ok=True)
        self._digest = hashlib.sha256()
        self._hashed = 0

    def open_for_append(self, have: int) -> BinaryIO:
        """Open to append after `have` bytes, hashing whatever an earlier run left first."""
        self._settle()
        if have == 0:
            self.discard()
            return self.path.open("wb")
        if self._hashed != have:
            self._digest = hashlib.sha256()
            with self.path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    self._digest.update(chunk)
            self._hashed = have
        return self.path.open("ab")

    def update(self, chunk: bytes) -> None:
        """Add a piece just written to the file (hashed in order, on the hasher thread)."""
        self._hashing.append(_HASHER.submit(self._digest.update, chunk))
        if len(self._hashing) > _HASH_BACKLOG:
            self._hashing.popleft().result()
        self._hashed += len(chunk)
        self.received += len(chunk)

    def _settle(self) -> None:
        """Wait until every piece handed to the hasher is in the digest."""
        while self._hashing:
            self._hashing.popleft().result()

    def sha256(self) -> str:
        self._settle()
        if self._hashed != self.size():
            self.open_for_append(self.size()).close()
        return self._digest.hexdigest()


class Transfer:
    """Fetches files with resume, retries, hashing and verification."""

    def __init__(
        self,
        client: httpx.Client,
        *,
        attempts: int = 5,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._attempts = attempts
        self._backoff = backoff(backoff_initial, backoff_max)
        self._sleep = sleep

    def fetch(self, remote: RemoteFile, root: Path, progress: ProgressSink) -> FetchedFile:
        """Fetch `remote` to `root/remote.path`, resuming a `.part` file left by an earlier try."""
        dest = root / remote.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = _PartFile(dest.with_name(dest.name + ".part"))
        if dest.exists() and not part.path.exists():
            # Completed by an earlier run that stopped before the whole model was done.
            os.replace(dest, part.path)
        disposition: str | None = None

        def one_try() -> None:
            nonlocal disposition
            disposition = self._try_once(remote, part, progress)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            progress.note(f"{remote.path}: {exc}; retrying (try {state.attempt_number + 1})")

        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Retryable),
            before_sleep=before_sleep,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            retrying(one_try)
        except _Retryable as exc:
            raise TransferFailed(
                f"{remote.path}: gave up after {self._attempts} tries ({exc}); run the same command "
                "again to resume",
                url=remote.url,
            ) from None
        progress.finish()
        size, sha256 = self._verify(remote, part)
        os.replace(part.path, dest)
        return FetchedFile(dest, size, sha256, part.received, disposition)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return min(exc.retry_after, _MAX_RETRY_AFTER)
        return float(self._backoff(state))

    def _try_once(self, remote: RemoteFile, part: _PartFile, progress: ProgressSink) -> str | None:
        have = part.size()
        if remote.size is not None and have > remote.size:
            part.discard()
            have = 0
        if remote.size is not None and have == remote.size and have > 0:
            return None
        if remote.size is not None:
            free = shutil.disk_usage(part.path.parent).free
            if remote.size - have > free:
                raise DownloadError(
                    f"{remote.path}: needs {remote.size - have:,} more bytes but only {free:,} are free "
                    f"in {part.path.parent}"
                )
        try:
            return self._stream(remote, part, have, progress)
        except (httpx.TransportError, httpx.DecodingError) as exc:
            # Connection refused, reset, dropped mid-body, timed out: the part file keeps what arrived.
            raise _Retryable(f"connection problem: {exc.__class__.__name__}: {exc}") from exc

    def _stream(self, remote: RemoteFile, part: _PartFile, have: int, progress: ProgressSink) -> str | None:
        url = remote.url
        for _ in range(_MAX_REDIRECTS + 1):
            headers = {"Accept-Encoding": "identity", **remote.headers}
            if remote.auth_host is not None and origin(url) == remote.auth_host:
                headers.update(remote.auth_headers)
            if have:
                headers["Range"] = f"bytes={have}-"
            with self._client.stream("GET", url, headers=headers, follow_redirects=False) as response:
                if response.is_redirect:
                    location = response.headers.get("Location")
                    if not location:
                        raise DownloadError(f"{remote.path}: redirect without a Location", url=url)
                    url = urljoin(url, location)
                    continue
                return self._receive(remote, part, have, response, progress)
        raise DownloadError(f"{remote.path}: more than {_MAX_REDIRECTS} redirects", url=remote.url)

    def _receive(
        self,
        remote: RemoteFile,
        part: _PartFile,
        have: int,
        response: httpx.Response,
        progress: ProgressSink,
    ) -> str | None:
        status = response.status_code
        self._raise_for_status(remote, response)
        disposition = disposition_filename(response.headers.get("Content-Disposition"))
        if status == 416:
            # Nothing left to send: the part file already holds the whole file, or is junk.
            if have and remote.size in (None, have):
                return disposition
            part.discard()
            raise _Retryable("the server refused to resume; starting the file again")
        if have and status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:
                part.discard()
                raise _Retryable("the server resumed at the wrong offset; starting the file again")
        elif have and status == 200:
            log.info("%s: the server ignored the Range request; fetching the whole file", remote.path)
            have = 0
        total = remote.size
        if total is None and "Content-Length" in response.headers:
            total = have + int(response.headers["Content-Length"])
        if have:
            progress.note(f"{remote.path}: resuming at {have:,} of {total or '?'} bytes")
        progress.start(remote.path, total, have)
        received = 0
        content_type = response.headers.get("Content-Type")
        with part.open_for_append(have) as out:
            # No chunk size: every piece is written as it arrives, so a dropped connection loses
            # nothing that was received (a buffered chunk would be fetched again).
            for chunk in response.iter_bytes():
                if received == 0 and have == 0 and looks_like_error_page(remote.path, content_type, chunk):
                    out.close()
                    part.discard()
                    raise NotAModel(
                        f"{remote.path}: the server sent a web page or an error message instead of the "
                        f"file ({error_page_summary(chunk)!r}); the source may need a login or a token, "
                        "or may be rate limiting",
                        url=str(response.url),
                    )
                view = memoryview(chunk)
                for start in range(0, len(view), _WRITE_SLICE):
                    out.write(view[start : start + _WRITE_SLICE])
                part.update(chunk)
                received += len(chunk)
                progress.advance(len(chunk))
        if total is not None and have + received < total:
            raise _Retryable(f"the connection closed after {have + received:,} of {total:,} bytes")
        return disposition

    @staticmethod
    def _raise_for_status(remote: RemoteFile, response: httpx.Response) -> None:
        status = response.status_code
        if status in (200, 206, 416):
            return
        url = str(response.url)
        if status == 429 or status >= 500:
            retry_after = response.headers.get("Retry-After")
            wait = float(retry_after) if retry_after and retry_after.isdigit() else None
            raise _Retryable(f"the server answered {status}", retry_after=wait)
        response.read()
        detail = _error_detail(response)
        if status in (401, 403):
            hint = f"; {remote.auth_hint}" if remote.auth_hint else ""
            raise AuthRequired(f"{remote.path}: the server answered {status}: {detail}{hint}", url=url)
        if status == 404:
            raise RemoteNotFound(f"{remote.path}: not found at the source ({detail})", url=url)
        raise DownloadError(f"{remote.path}: the server answered {status}: {detail}", url=url)

    @staticmethod
    def _verify(remote: RemoteFile, part: _PartFile) -> tuple[int, str]:
        size = part.size()
        sha256 = part.sha256()
        problem = None
        if remote.size is not None and size != remote.size:
            problem = f"size {size:,} bytes, but the source publishes {remote.size:,}"
        elif remote.sha256 is not None and sha256 != remote.sha256.lower():
            problem = f"SHA-256 {sha256}, but the source publishes {remote.sha256.lower()}"
        elif remote.git_sha1 is not None and (blob := git_blob_sha1(part.path)) != remote.git_sha1.lower():
            problem = f"git blob id {blob}, but the source publishes {remote.git_sha1}"
        if problem is not None:
            # These bytes can never become the right file: resuming them would only repeat the failure.
            part.discard()
            raise ChecksumMismatch(f"{remote.path}: downloaded {problem}; nothing was installed")
        if remote.path.lower().endswith(".safetensors"):
            try:
                check_safetensors_header(part.path)
            except UnsafeFile as exc:
                part.discard()
                raise NotAModel(str(exc)) from None
        return size, sha256


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:200] or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:200]
    return str(body)[:200]
