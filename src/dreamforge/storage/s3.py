"""Artifacts in an S3-compatible bucket (MinIO in Compose), fetched by clients through presigned URLs.

Used by the distributed topology, where the API and the GPU workers run on different hosts and so
cannot share a data directory. Uploads are retried on transient failures only; anything that still
fails surfaces as `StorageUnavailable`, so callers have one error to map to `storage_unavailable`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from dreamforge.storage.base import SignedUrl, StorageUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

_TRANSIENT_NETWORK_ERRORS = (
    EndpointConnectionError,
    ConnectionClosedError,
    ReadTimeoutError,
    ConnectTimeoutError,
)
_TRANSIENT_CODES = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"})
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
# The most keys one DeleteObjects request may name.
_DELETE_BATCH = 1000


class S3Unavailable(StorageUnavailable):
    """The object store could not be reached or refused the request; the item fails with this code."""

    def __init__(self, endpoint: str, bucket: str, detail: str) -> None:
        super().__init__(
            f"object storage unavailable (endpoint {endpoint}, bucket {bucket!r}): {detail}",
            details={"component": "storage", "endpoint": endpoint, "bucket": bucket},
        )
        self.endpoint = endpoint
        self.bucket = bucket
        self.detail = detail


def _with_scheme(endpoint: str) -> str:
    # Compose files tend to say `minio:9000`; boto3 needs a URL, and MinIO inside Compose speaks plain HTTP.
    endpoint = endpoint.strip().rstrip("/")
    return endpoint if "://" in endpoint else f"http://{endpoint}"


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT_NETWORK_ERRORS):
        return True
    if isinstance(exc, ClientError):
        return _http_status(exc) >= 500 or _error_code(exc) in _TRANSIENT_CODES
    return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return f"{_error_code(exc) or 'error'} (HTTP {_http_status(exc)}): {exc}"
    return f"{type(exc).__name__}: {exc}"


class S3ArtifactStore:
    """Stores objects in one private bucket; clients download them with presigned GET URLs."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str = "us-east-1",
        ttl_seconds: int = 900,
        public_endpoint: str = "",
        retry_attempts: int = 5,
        retry_max_wait: float = 8.0,
    ) -> None:
        self.endpoint = _with_scheme(endpoint)
        self.public_endpoint = _with_scheme(public_endpoint) if public_endpoint else self.endpoint
        self.bucket = bucket
        self.region = region
        self._ttl = ttl_seconds
        self._attempts = retry_attempts
        self._max_wait = retry_max_wait
        config = Config(
            signature_version="s3v4",
            # MinIO serves buckets under the path; virtual-host style would need wildcard DNS.
            s3={"addressing_style": "path"},
            connect_timeout=3,
            read_timeout=30,
            # One try per call: tenacity is the only retry layer, so `retry_attempts` means what it says.
            # (botocore's `max_attempts` counts retries after the first try; `total_max_attempts` counts all.)
            retries={"total_max_attempts": 1, "mode": "standard"},
        )
        # A private session: the default one is shared module state and not safe to build clients from
        # concurrently, while the clients themselves are thread-safe.
        session = boto3.session.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region
        )
        self.client: Any = session.client("s3", endpoint_url=self.endpoint, config=config)
        # Presigned URLs embed the host they were signed for, so sign with the address clients can reach.
        # Presigning is a local computation: this client never opens a connection.
        self._presigner: Any = (
            session.client("s3", endpoint_url=self.public_endpoint, config=config)
            if self.public_endpoint != self.endpoint
            else self.client
        )

    def _unavailable(self, detail: str) -> StorageUnavailable:
        return S3Unavailable(self.endpoint, self.bucket, detail)

    def _call(self, what: str, fn: Callable[[], T], *, retry: bool) -> T:
        """Run one S3 call, retried on transient errors if `retry`; failures raise `StorageUnavailable`."""
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts if retry else 1),
            wait=wait_exponential_jitter(multiplier=0.2, max=self._max_wait),
            retry=retry_if_exception(_is_transient),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )
        try:
            return retrying(fn)
        except (BotoCoreError, ClientError) as exc:
            tries = _attempts_made(retrying)
            suffix = f" after {tries} attempts" if tries > 1 else ""
            raise self._unavailable(f"{what} failed{suffix}: {_describe(exc)}") from exc

    def ensure_bucket(self) -> None:
        """Create the bucket (private) unless it exists; retried, as MinIO may still be starting."""

        def ensure() -> None:
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if _error_code(exc) not in _MISSING_CODES and _error_code(exc) != "NoSuchBucket":
                    raise
            # No ACL and no policy: objects stay private and are only reachable through presigned URLs.
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.region != "us-east-1":
                # us-east-1 is S3's implicit default and rejects an explicit constraint naming it.
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            try:
                self.client.create_bucket(**kwargs)
            except ClientError as exc:
                # Another service created it between our HEAD and PUT.
                if _error_code(exc) != "BucketAlreadyOwnedByYou":
                    raise

        self._call("ensure bucket", ensure, retry=True)

    def ping(self) -> None:
        """A cheap reachability check for readiness probes: the bucket answers a HEAD."""
        self._call("ping (head bucket)", lambda: self.client.head_bucket(Bucket=self.bucket), retry=False)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Upload `data` under `key`, retrying transient failures; raises `StorageUnavailable` in the end."""
        # The server recomputes this and rejects the upload on mismatch, so a corrupted body never lands.
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()

        def upload() -> None:
            # A PUT is atomic in S3: the object appears whole when the request succeeds and readers never
            # see half of it, so unlike the local store no temporary name is needed.
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                ContentLength=len(data),
                ChecksumSHA256=checksum,
            )

        self._call(f"put {key}", upload, retry=True)

    def get(self, key: str) -> bytes:
        """The bytes under `key` (raises `KeyError` if missing)."""

        def fetch() -> bytes | None:
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _error_code(exc) in _MISSING_CODES:
                    return None
                raise
            body: bytes = response["Body"].read()
            return body

        data = self._call(f"get {key}", fetch, retry=False)
        if data is None:
            raise KeyError(key)
        return data

    def delete(self, key: str) -> None:
        """Remove the object under `key` (S3 answers a missing key with success too), retrying
        transient failures; raises `StorageUnavailable` in the end."""

        def remove() -> None:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _error_code(exc) not in _MISSING_CODES:
                    raise

        self._call(f"delete {key}", remove, retry=True)

    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove every object of `keys` with DeleteObjects (up to 1000 keys a request), each request
        retried like `delete`; raises `StorageUnavailable` if a key could not be removed."""
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _DELETE_BATCH):
            chunk = unique[start : start + _DELETE_BATCH]

            def remove(chunk: list[str] = chunk) -> None:
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                )
                errors = [e for e in response.get("Errors", []) if e.get("Code") not in _MISSING_CODES]
                if errors:
                    # The request succeeded but some keys did not: raised as the first key's error, so
                    # a transient one (SlowDown, InternalError) is retried. Deleting again is harmless.
                    first = errors[0]
                    raise ClientError(
                        {
                            "Error": {
                                "Code": first.get("Code", ""),
                                "Message": f"{len(errors)} key(s) not deleted, first {first.get('Key')!r}: "
                                f"{first.get('Message', '')}",
                            }
                        },
                        "DeleteObjects",
                    )

            self._call(f"delete {len(chunk)} object(s)", remove, retry=True)

    def signed_url(self, key: str, base_url: str) -> SignedUrl:
        """A presigned GET URL on the public endpoint; `base_url` is unused since S3 serves the bytes."""
        # Truncated to the second like the signature's X-Amz-Date, so `expires_at` is never later than
        # the moment S3 starts refusing the URL.
        now = datetime.now(UTC).replace(microsecond=0)
        url: str = self._presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self._ttl, HttpMethod="GET"
        )
        return SignedUrl(url=url, expires_at=now + timedelta(seconds=self._ttl))


def _attempts_made(retrying: Retrying) -> int:
    return int(retrying.statistics.get("attempt_number", 1))
