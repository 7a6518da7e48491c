"""`S3ArtifactStore` against a real S3 HTTP endpoint (moto's server on loopback).

Failure contract under test: every failure to reach or use the bucket surfaces as `StorageUnavailable`
(code `storage_unavailable`), whether transient (connection refused, 5xx/SlowDown: retried
`retry_attempts` times first) or not (NoSuchBucket, AccessDenied: raised after one try, since retrying
cannot fix configuration). The original botocore error is kept as `__cause__`.

moto checks neither signatures nor presigned expiry, so expiry enforcement is not tested here.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, EndpointConnectionError
from s3_server import MotoS3
from support import free_port

from dreamforge.storage.base import CONTENT_TYPES, StorageUnavailable, artifact_key
from dreamforge.storage.s3 import S3ArtifactStore

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64
TTL = 600


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    server = MotoS3().start()
    yield server
    server.stop()


def _bucket() -> str:
    return f"df-test-{uuid.uuid4().hex[:12]}"


def _store(s3: MotoS3, bucket: str, **kw: Any) -> S3ArtifactStore:
    kw.setdefault("ttl_seconds", TTL)
    return S3ArtifactStore(
        endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, bucket=bucket, **kw
    )


@pytest.fixture
def store(s3: MotoS3) -> S3ArtifactStore:
    store = _store(s3, _bucket(), retry_attempts=3, retry_max_wait=0.05)
    store.ensure_bucket()
    return store


def _key(fmt: str = "png") -> str:
    return artifact_key(uuid.uuid4(), 0, fmt)


def _count_sends(store: S3ArtifactStore, operation: str) -> list[Any]:
    """Record every HTTP request the store's client sends for `operation` (one per try)."""
    sent: list[Any] = []
    store.client.meta.events.register(
        f"before-send.s3.{operation}", lambda request, **_: sent.append(request)
    )
    return sent


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def test_ensure_bucket_creates_a_missing_private_bucket_and_is_idempotent(s3: MotoS3) -> None:
    bucket = _bucket()
    raw = s3.client()
    with pytest.raises(ClientError):
        raw.head_bucket(Bucket=bucket)

    store = _store(s3, bucket)
    store.ensure_bucket()
    store.ensure_bucket()

    raw.head_bucket(Bucket=bucket)
    grants = raw.get_bucket_acl(Bucket=bucket)["Grants"]
    assert [g["Permission"] for g in grants] == ["FULL_CONTROL"]
    assert all(g["Grantee"]["Type"] == "CanonicalUser" for g in grants)
    with pytest.raises(ClientError, match="NoSuchBucketPolicy"):
        raw.get_bucket_policy(Bucket=bucket)


def test_endpoint_without_scheme_means_http(s3: MotoS3) -> None:
    store = S3ArtifactStore(
        endpoint=f"127.0.0.1:{s3.port}", access_key="testing", secret_key="testing", bucket=_bucket()
    )
    assert store.endpoint == s3.endpoint
    store.ensure_bucket()
    store.ping()


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_put_then_get_round_trips_bytes_and_content_type(
    s3: MotoS3, store: S3ArtifactStore, fmt: str
) -> None:
    key = _key(fmt)
    sent = _count_sends(store, "PutObject")

    store.put(key, PNG, CONTENT_TYPES[fmt])

    assert store.get(key) == PNG
    head = s3.client().head_object(Bucket=store.bucket, Key=key)
    assert head["ContentType"] == CONTENT_TYPES[fmt]
    assert head["ContentLength"] == len(PNG)
    # The body's SHA-256 travels with the upload, so a real S3/MinIO rejects a corrupted body.
    assert len(sent) == 1
    assert (
        sent[0].headers["x-amz-checksum-sha256"].decode()
        == base64.b64encode(hashlib.sha256(PNG).digest()).decode()
    )


def test_get_of_a_missing_key_raises_key_error(store: S3ArtifactStore) -> None:
    key = _key()
    with pytest.raises(KeyError) as info:
        store.get(key)
    assert info.value.args == (key,)


def test_presigned_url_serves_the_bytes_over_http(store: S3ArtifactStore) -> None:
    key = _key()
    store.put(key, PNG, "image/png")

    before = datetime.now(UTC)
    signed = store.signed_url(key, "http://api.example.test/v1")

    response = httpx.get(signed.url, timeout=10)
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"
    url = urlparse(signed.url)
    assert url.netloc == urlparse(store.endpoint).netloc
    assert url.path == f"/{store.bucket}/{key}"
    assert parse_qs(url.query)["X-Amz-Expires"] == [str(TTL)]
    assert signed.expires_at.tzinfo is not None
    assert timedelta(seconds=TTL - 2) <= signed.expires_at - before <= timedelta(seconds=TTL)


def test_presigned_url_carries_the_public_endpoint(s3: MotoS3, store: S3ArtifactStore) -> None:
    key = _key()
    store.put(key, PNG, "image/png")
    public = _store(s3, store.bucket, public_endpoint="http://files.example.test:9000")

    url = urlparse(public.signed_url(key, "http://api.example.test/v1").url)

    assert (url.scheme, url.netloc) == ("http", "files.example.test:9000")
    assert url.path == f"/{store.bucket}/{key}"
    # Uploads still go to the internal endpoint.
    assert public.get(key) == PNG


def test_unreachable_endpoint_fails_after_exactly_retry_attempts(
    s3: MotoS3, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = _bucket()
    dead = S3ArtifactStore(
        endpoint=f"http://127.0.0.1:{free_port()}",
        access_key="testing",
        secret_key="testing",
        bucket=bucket,
        retry_attempts=3,
        retry_max_wait=0.05,
    )
    sent = _count_sends(dead, "PutObject")
    key = _key()

    started = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, logger="dreamforge.storage.s3"),
        pytest.raises(StorageUnavailable) as info,
    ):
        dead.put(key, PNG, "image/png")

    assert time.monotonic() - started < 3
    assert len(sent) == 3
    assert len([r for r in caplog.records if r.name == "dreamforge.storage.s3"]) == 2
    assert info.value.code == "storage_unavailable"
    assert isinstance(info.value.__cause__, EndpointConnectionError)
    assert dead.endpoint in str(info.value)
    assert bucket in str(info.value)
    assert "after 3 attempts" in str(info.value)
    # Nothing reached any server: a live store on the same bucket and key finds nothing.
    live = _store(s3, bucket)
    live.ensure_bucket()
    with pytest.raises(KeyError):
        live.get(key)


def test_unreachable_endpoint_fails_ping_and_ensure_bucket() -> None:
    dead = S3ArtifactStore(
        endpoint=f"http://127.0.0.1:{free_port()}",
        access_key="testing",
        secret_key="testing",
        bucket=_bucket(),
        retry_attempts=2,
        retry_max_wait=0.05,
    )
    with pytest.raises(StorageUnavailable):
        dead.ping()
    with pytest.raises(StorageUnavailable):
        dead.ensure_bucket()


def test_transient_server_errors_are_retried_until_the_upload_lands(
    store: S3ArtifactStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Two 503 SlowDown answers (injected before the request leaves), then the real server accepts it."""
    sends: list[Any] = []

    def slow_down_twice(request: Any, **_: Any) -> AWSResponse | None:
        sends.append(request)
        if len(sends) > 2:
            return None
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Body(body))

    store.client.meta.events.register("before-send.s3.PutObject", slow_down_twice)
    key = _key()

    with caplog.at_level(logging.WARNING, logger="dreamforge.storage.s3"):
        store.put(key, PNG, "image/png")

    assert len(sends) == 3
    assert len([r for r in caplog.records if r.name == "dreamforge.storage.s3"]) == 2
    assert store.get(key) == PNG


def test_missing_bucket_is_not_retried(s3: MotoS3, caplog: pytest.LogCaptureFixture) -> None:
    """NoSuchBucket is a configuration error: one try, then `StorageUnavailable` naming the code."""
    store = _store(s3, _bucket(), retry_attempts=5, retry_max_wait=0.05)
    sent = _count_sends(store, "PutObject")

    with (
        caplog.at_level(logging.WARNING, logger="dreamforge.storage.s3"),
        pytest.raises(StorageUnavailable, match="NoSuchBucket") as info,
    ):
        store.put(_key(), PNG, "image/png")

    assert len(sent) == 1
    assert not [r for r in caplog.records if r.name == "dreamforge.storage.s3"]
    assert isinstance(info.value.__cause__, ClientError)
    with pytest.raises(StorageUnavailable, match="NoSuchBucket"):
        store.get(_key())
    with pytest.raises(StorageUnavailable):
        store.ping()


def test_delete_removes_the_object_and_a_missing_one_is_fine(s3: MotoS3, store: S3ArtifactStore) -> None:
    key = _key()
    store.put(key, PNG, "image/png")

    store.delete(key)
    store.delete(key)

    with pytest.raises(KeyError):
        store.get(key)
    assert s3.client().list_objects_v2(Bucket=store.bucket).get("KeyCount") == 0


def test_delete_many_sends_batches_and_skips_missing_keys(
    store: S3ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dreamforge.storage.s3._DELETE_BATCH", 2)
    keys = [_key() for _ in range(4)]
    for key in keys:
        store.put(key, PNG, "image/png")
    kept = _key()
    store.put(kept, PNG, "image/png")
    sent = _count_sends(store, "DeleteObjects")

    # One key twice and one never stored: 5 distinct keys, 3 requests of at most 2.
    store.delete_many([*keys, keys[0], _key()])

    assert len(sent) == 3
    for key in keys:
        with pytest.raises(KeyError):
            store.get(key)
    assert store.get(kept) == PNG
    store.delete_many([])
    assert len(sent) == 3


def _delete_result(code: str, key: str) -> AWSResponse:
    body = (
        f"<DeleteResult><Error><Key>{key}</Key><Code>{code}</Code><Message>nope</Message></Error></DeleteResult>"
    ).encode()
    return AWSResponse("http://s3.test", 200, {"Content-Type": "application/xml"}, _Body(body))


def test_delete_many_retries_a_key_s3_failed_transiently(store: S3ArtifactStore) -> None:
    key = _key()
    store.put(key, PNG, "image/png")
    sends: list[Any] = []

    def fail_once(request: Any, **_: Any) -> AWSResponse | None:
        sends.append(request)
        return _delete_result("InternalError", key) if len(sends) == 1 else None

    store.client.meta.events.register("before-send.s3.DeleteObjects", fail_once)
    store.delete_many([key])

    assert len(sends) == 2
    with pytest.raises(KeyError):
        store.get(key)


def test_delete_many_refused_raises_storage_unavailable_at_once(store: S3ArtifactStore) -> None:
    key = _key()
    sends: list[Any] = []

    def refuse(request: Any, **_: Any) -> AWSResponse:
        sends.append(request)
        return _delete_result("AccessDenied", key)

    store.client.meta.events.register("before-send.s3.DeleteObjects", refuse)
    with pytest.raises(StorageUnavailable, match="AccessDenied"):
        store.delete_many([key])
    assert len(sends) == 1


def test_delete_on_an_unreachable_endpoint_raises_storage_unavailable() -> None:
    dead = S3ArtifactStore(
        endpoint=f"http://127.0.0.1:{free_port()}",
        access_key="testing",
        secret_key="testing",
        bucket=_bucket(),
        retry_attempts=2,
        retry_max_wait=0.05,
    )
    sent = _count_sends(dead, "DeleteObject")
    with pytest.raises(StorageUnavailable, match="after 2 attempts"):
        dead.delete(_key())
    assert len(sent) == 2
