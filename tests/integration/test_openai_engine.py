"""The OpenAI Images adapter on its own, against the local fake of the API: what it sends, how it
splits counts, how it fails, and that the key leaves only as the bearer header of a generation."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from fakeopenai import FakeOpenAI

from dreamforge.engines.base import EngineError, ModelSpec, RenderRequest
from dreamforge.engines.openai_images import OpenAIImagesEngine
from dreamforge.error_codes import ErrorCode


class Stop(Exception):
    """What the job's checks raise to stop an engine call (a cancel, in the runner)."""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as api:
        yield api


@pytest.fixture
def engine(fake: FakeOpenAI) -> OpenAIImagesEngine:
    fake.clear_faults()
    fake.clear_requests()
    return OpenAIImagesEngine(fake.base_url, fake.api_key, timeout=5, max_attempts=3)


def _spec(model: str) -> ModelSpec:
    return ModelSpec(
        id=uuid.uuid4(),
        name=f"openai-images/{model}",
        layout="remote",
        path=model,
        config_path=None,
        sha256="",
    )


def _request(size: int = 1024) -> RenderRequest:
    return RenderRequest(
        prompt="a lighthouse",
        negative_prompt=None,
        width=size,
        height=size,
        steps=30,
        guidance=7,
        scheduler="x",
    )


def _steps() -> tuple[list[tuple[int, int]], object]:
    seen: list[tuple[int, int]] = []
    return seen, lambda step, total: seen.append((step, total))


def test_dall_e_3_draws_one_image_per_request_and_reports_each_as_a_step(
    engine: OpenAIImagesEngine, fake: FakeOpenAI
) -> None:
    seen, on_step = _steps()
    images = engine.render(_spec("dall-e-3"), _request(), [1, 2, 3], on_step)  # type: ignore[arg-type]
    assert [i.size for i in images] == [(1024, 1024)] * 3
    sent = fake.generation_requests()
    assert [r.body["n"] for r in sent if r.body] == [1, 1, 1]
    assert all(r.body and r.body["response_format"] == "b64_json" for r in sent)
    assert (0, 3) in seen and (3, 3) in seen


def test_a_result_url_is_fetched_without_the_key(engine: OpenAIImagesEngine, fake: FakeOpenAI) -> None:
    made = httpx.post(
        f"{fake.base_url}/images/generations",
        headers={"Authorization": f"Bearer {fake.api_key}"},
        json={"model": "dall-e-2", "prompt": "x", "size": "256x256"},
    ).json()
    fake.clear_requests()
    fake.fail_next(200, body={"created": int(time.time()), "data": [{"url": made["data"][0]["url"]}]})
    [image] = engine.render(_spec("dall-e-2"), _request(256), [1], lambda *_: None)
    assert image.size == (256, 256)
    download = [r for r in fake.requests if r.method == "GET"]
    assert len(download) == 1 and "authorization" not in download[0].headers


def test_a_400_is_provider_rejected_with_the_providers_message_and_without_the_key(
    engine: OpenAIImagesEngine, fake: FakeOpenAI
) -> None:
    fake.fail_next(400, body={"error": {"message": f"Your request was rejected (key {fake.api_key})"}})
    with pytest.raises(EngineError) as caught:
        engine.render(_spec("gpt-image-1"), _request(), [1], lambda *_: None)
    assert caught.value.code == ErrorCode.provider_rejected
    assert "Your request was rejected" in caught.value.message and fake.api_key not in caught.value.message
    assert len(fake.generation_requests()) == 1


def test_5xx_through_every_try_is_provider_unavailable(engine: OpenAIImagesEngine, fake: FakeOpenAI) -> None:
    fake.fail_next(503, times=3, retry_after="0")
    with pytest.raises(EngineError) as caught:
        engine.render(_spec("gpt-image-1"), _request(), [1], lambda *_: None)
    assert caught.value.code == ErrorCode.provider_unavailable
    assert len(fake.generation_requests()) == 3


def test_no_key_fails_before_anything_is_sent(fake: FakeOpenAI) -> None:
    fake.clear_requests()
    engine = OpenAIImagesEngine(fake.base_url, None, timeout=5, max_attempts=3)
    with pytest.raises(EngineError) as caught:
        engine.render(_spec("gpt-image-1"), _request(), [1], lambda *_: None)
    assert caught.value.code == ErrorCode.provider_auth_failed
    assert fake.generation_requests() == []


def test_the_jobs_checks_stop_a_request_in_flight_at_once(
    engine: OpenAIImagesEngine, fake: FakeOpenAI
) -> None:
    fake.delay_next(3)
    beats = 0

    def on_step(step: int, total: int) -> None:
        nonlocal beats
        beats += 1
        if beats > 3:
            raise Stop

    started = time.monotonic()
    with pytest.raises(Stop):
        engine.render(_spec("gpt-image-1"), _request(), [1], on_step)
    assert time.monotonic() - started < 1.5
