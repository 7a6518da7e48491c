"""Oversized requests get an `ErrorResponse` (413, 431) before a route reads them; SSE per key is bounded."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from dreamforge.api.app import create_app
from dreamforge.config import Settings
from dreamforge.events.feed import FeedHub, FeedItem, TooManyStreams
from dreamforge.events.notifier import LocalNotifier


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    limited = settings.model_copy(update={"max_body_bytes": 2048, "max_header_bytes": 4096})
    with TestClient(create_app(limited)) as test_client:
        yield test_client


def test_a_body_over_the_limit_is_413(client: TestClient) -> None:
    body = {"type": "generate", "prompt": "x" * 3000, "width": 64, "height": 64}
    answer = client.post("/v1/jobs", json=body)
    assert answer.status_code == 413
    error = answer.json()
    assert (error["code"], error["details"]["limit"]) == ("payload_too_large", "DF_MAX_BODY_BYTES")
    assert error["correlation_id"] == answer.headers["x-request-id"]


def test_a_chunked_body_over_the_limit_is_413_too(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"type": "generate", "prompt": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'", "width": 64, "height": 64}'

    answer = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert (answer.status_code, answer.json()["code"]) == (413, "payload_too_large")


def test_headers_over_the_limit_are_431(client: TestClient) -> None:
    answer = client.get("/v1/models", headers={"X-Padding": "z" * 5000})
    assert answer.status_code == 431
    assert answer.json()["code"] == "headers_too_large"


def test_a_prompt_longer_than_the_contract_allows_is_422(client: TestClient, settings: Settings) -> None:
    roomy = settings.model_copy(update={"max_body_bytes": 64 * 1024})
    with TestClient(create_app(roomy)) as wide:
        answer = wide.post(
            "/v1/jobs", json={"type": "generate", "prompt": "p" * 4097, "width": 64, "height": 64}
        )
    assert answer.status_code == 422
    assert answer.json()["code"] == "validation_error"


def test_streams_per_api_key_are_bounded() -> None:
    hub: FeedHub[FeedItem] = FeedHub(
        lambda job, after: [],
        LocalNotifier(),
        max_streams=100,
        max_streams_per_job=100,
        max_streams_per_key=1,
    )
    key = uuid.uuid4()
    hub.check_capacity(uuid.uuid4(), key)
    hub._per_key[key] = 1  # one stream of this key is open
    with pytest.raises(TooManyStreams) as caught:
        hub.check_capacity(uuid.uuid4(), key)
    assert caught.value.details["limit"] == "DF_SSE_MAX_STREAMS_PER_KEY"
    hub.check_capacity(uuid.uuid4(), uuid.uuid4())  # other keys are not affected


def test_a_small_chunked_body_reaches_the_route_whole(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"type": "generate", '
        yield b'"prompt": "a cat", "width": 64, "height": 64}'

    answer = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    # Parsed and validated: it fails only because this registry has no model installed.
    assert (answer.status_code, answer.json()["code"]) == (422, "no_model_installed")
