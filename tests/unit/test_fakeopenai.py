"""The OpenAI Images fake answers like the real API: auth, validation, images, faults and headers."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from fakeopenai import FakeOpenAI, mask_key
from PIL import Image


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as api:
        yield api


@pytest.fixture
def client(fake: FakeOpenAI) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    with httpx.Client(base_url=fake.base_url, headers=headers, timeout=5) as c:
        yield c


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_gpt_image_1_returns_n_decodable_pngs(fake: FakeOpenAI, client: httpx.Client) -> None:
    resp = client.post(
        "/images/generations",
        json={"model": "gpt-image-1", "prompt": "a red fox", "n": 2, "size": "1536x1024"},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert isinstance(body["created"], int)
    assert body["output_format"] == "png"
    assert body["size"] == "1536x1024"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert len(body["data"]) == 2
    images = [_decode(base64.b64decode(item["b64_json"])) for item in body["data"]]
    assert all(img.format == "PNG" and img.size == (1536, 1024) for img in images)
    assert images[0].tobytes() != images[1].tobytes()
    assert resp.headers["x-request-id"].startswith("req_")
    assert int(resp.headers["openai-processing-ms"]) >= 0

    (rec,) = fake.generation_requests()
    assert rec.body["prompt"] == "a red fox"
    assert rec.headers["authorization"] == f"Bearer {fake.api_key}"
    assert rec.status == 200


def test_gpt_image_1_jpeg_and_auto_size(client: httpx.Client) -> None:
    resp = client.post(
        "/images/generations",
        json={"model": "gpt-image-1", "prompt": "x", "size": "auto", "output_format": "jpeg"},
    )
    assert resp.status_code == 200, resp.text
    img = _decode(base64.b64decode(resp.json()["data"][0]["b64_json"]))
    assert (img.format, img.size) == ("JPEG", (1024, 1024))


def test_dall_e_2_url_is_fetchable_without_auth(fake: FakeOpenAI, client: httpx.Client) -> None:
    resp = client.post("/images/generations", json={"model": "dall-e-2", "prompt": "cat", "size": "256x256"})
    assert resp.status_code == 200, resp.text
    (item,) = resp.json()["data"]
    assert "b64_json" not in item
    got = httpx.get(item["url"], timeout=5)
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/png"
    assert _decode(got.content).size == (256, 256)
    assert "authorization" not in fake.requests[-1].headers


def test_dall_e_3_b64_with_revised_prompt(client: httpx.Client) -> None:
    resp = client.post(
        "/images/generations",
        json={"model": "dall-e-3", "prompt": "owl", "size": "1792x1024", "response_format": "b64_json"},
    )
    assert resp.status_code == 200, resp.text
    (item,) = resp.json()["data"]
    assert "owl" in item["revised_prompt"]
    assert _decode(base64.b64decode(item["b64_json"])).size == (1792, 1024)


def test_wrong_key_is_401_without_echoing_the_key(fake: FakeOpenAI) -> None:
    wrong = "sk-wrong-" + "q" * 30 + "abcd"
    resp = httpx.post(
        f"{fake.base_url}/images/generations",
        headers={"Authorization": f"Bearer {wrong}"},
        json={"model": "gpt-image-1", "prompt": "x"},
        timeout=5,
    )
    assert resp.status_code == 401
    assert wrong not in resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None
    assert mask_key(wrong) in error["message"]
    assert mask_key(wrong).startswith("sk-") and mask_key(wrong).endswith("abcd")

    missing = httpx.post(f"{fake.base_url}/images/generations", json={"prompt": "x"}, timeout=5)
    assert missing.status_code == 401
    assert missing.json()["error"]["message"].startswith("You didn't provide an API key.")
    assert missing.json()["error"]["code"] is None


def test_seed_is_an_unknown_parameter(client: httpx.Client) -> None:
    resp = client.post("/images/generations", json={"model": "gpt-image-1", "prompt": "x", "seed": 1})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == "seed"
    assert error["message"] == "Unknown parameter: 'seed'."
    assert error["type"] == "invalid_request_error"


def test_validation_errors(client: httpx.Client) -> None:
    cases = [
        ({"model": "gpt-image-1", "prompt": "x", "response_format": "url"}, "response_format"),
        ({"model": "dall-e-3", "prompt": "x", "n": 2}, "n"),
        ({"model": "dall-e-2", "prompt": "x", "size": "1792x1024"}, "size"),
        ({"model": "dall-e-2", "prompt": "x" * 1001}, "prompt"),
        ({"model": "gpt-image-1", "prompt": ""}, "prompt"),
        ({"model": "gpt-image-1", "prompt": "x", "n": 11}, "n"),
        ({"model": "dall-e-3", "prompt": "x", "output_format": "png"}, "output_format"),
    ]
    for payload, param in cases:
        resp = client.post("/images/generations", json=payload)
        assert resp.status_code == 400, payload
        assert resp.json()["error"]["param"] == param, payload


def test_unknown_model_is_404(client: httpx.Client) -> None:
    resp = client.post("/images/generations", json={"model": "dall-e-9", "prompt": "x"})
    assert resp.status_code == 404
    error = resp.json()["error"]
    assert error["code"] == "model_not_found"
    assert error["message"] == "The model `dall-e-9` does not exist or you do not have access to it."


def test_fail_next_429_then_success(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.fail_next(429, retry_after="1")
    payload = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}
    first = client.post("/images/generations", json=payload)
    assert first.status_code == 429
    assert first.headers["retry-after"] == "1"
    error = first.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert error["message"].startswith("Rate limit reached for images per min")
    second = client.post("/images/generations", json=payload)
    assert second.status_code == 200
    assert [r.status for r in fake.generation_requests()] == [429, 200]


def test_bad_key_beats_scripted_fault(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.fail_next(503)
    bad = httpx.post(
        f"{fake.base_url}/images/generations",
        headers={"Authorization": "Bearer sk-nope-nope-nope"},
        json={"prompt": "x"},
        timeout=5,
    )
    assert bad.status_code == 401
    resp = client.post("/images/generations", json={"prompt": "x"})
    assert resp.status_code == 503
    assert resp.json()["error"]["type"] == "server_error"


def test_rate_limit_headers(client: httpx.Client) -> None:
    resp = client.post("/images/generations", json={"model": "dall-e-2", "prompt": "x", "size": "256x256"})
    assert resp.status_code == 200
    assert int(resp.headers["x-ratelimit-limit-requests"]) == 50
    assert int(resp.headers["x-ratelimit-remaining-requests"]) == 49
    assert resp.headers["x-ratelimit-reset-requests"].endswith("s")


def test_delay_is_interrupted_by_stop() -> None:
    api = FakeOpenAI().start()
    api.delay_next(30)
    outcome: list[BaseException | int] = []

    def call() -> None:
        try:
            r = httpx.post(
                f"{api.base_url}/images/generations",
                headers={"Authorization": f"Bearer {api.api_key}"},
                json={"prompt": "x"},
                timeout=10,
            )
            outcome.append(r.status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 5
    while not api.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    api.stop()
    thread.join(timeout=5)
    assert time.monotonic() - started < 2
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.HTTPError)


def test_delay_times_out_client(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.delay_next(0.5)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/images/generations", json={"prompt": "x"}, timeout=0.1)
