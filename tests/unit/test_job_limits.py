"""Job limits: the per-job arithmetic and messages, the queue cap, and how the API renders them."""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from dreamforge.api.errors import REQUEST_ID_HEADER, install_error_handlers
from dreamforge.api.middleware import RequestIdMiddleware
from dreamforge.config import Settings
from dreamforge.jobs.limits import (
    NO_LIMITS,
    QUEUE_FULL_RETRY_AFTER_SECONDS,
    JobLimits,
    LimitExceeded,
    QueueFull,
    check_request,
)


@dataclass(frozen=True)
class Shape:
    width: int = 1024
    height: int = 1024
    count: int = 1
    steps: int = 30
    output_scale: int = 1
    refine_steps: int = 0


DEFAULTS = Settings(_env_file=None)
DEFAULT_LIMITS = JobLimits(
    max_megapixels_per_job=DEFAULTS.max_megapixels_per_job,
    max_steps=DEFAULTS.max_steps,
    max_queued_jobs=DEFAULTS.max_queued_jobs,
)


def test_defaults_admit_the_largest_batch_at_sdxl_size_and_the_contracts_steps() -> None:
    assert (DEFAULTS.max_steps, DEFAULTS.max_queued_jobs) == (200, 1000)
    check_request(Shape(count=100, steps=200), DEFAULT_LIMITS)
    with pytest.raises(LimitExceeded):
        check_request(Shape(width=1032, count=100), DEFAULT_LIMITS)


def test_no_limits_admit_anything() -> None:
    check_request(Shape(width=4096, height=4096, count=100, steps=200), NO_LIMITS)


def test_megapixels_breach_names_the_limit_and_both_values() -> None:
    with pytest.raises(LimitExceeded) as caught:
        check_request(Shape(width=4096, height=4096, count=16), DEFAULT_LIMITS)
    err = caught.value
    assert (err.code, err.status) == ("limit_exceeded", 422)
    assert err.message == (
        "width*height*count is 268.4 MP (16 x 4096x4096); this service allows at most 104.9 MP per job "
        "(DF_MAX_MEGAPIXELS_PER_JOB)"
    )
    assert err.details == {
        "limit": "DF_MAX_MEGAPIXELS_PER_JOB",
        "max": 104.8576,
        "requested": 268.435456,
        "field": "width*height*count",
    }


def test_megapixels_cap_is_inclusive_and_exact_in_pixels() -> None:
    limits = JobLimits(max_megapixels_per_job=0.02)
    check_request(Shape(width=100, height=100, count=2), limits)  # exactly 20,000 pixels
    check_request(Shape(width=64, height=64, count=4), limits)  # 16,384
    with pytest.raises(LimitExceeded) as caught:
        check_request(Shape(width=64, height=64, count=5), limits)  # 20,480: one image too many
    assert caught.value.details["requested"] == 0.02048
    assert "is 0.0205 MP (5 x 64x64); this service allows at most 0.0200 MP" in caught.value.message


def test_close_amounts_are_shown_with_enough_decimals_to_differ() -> None:
    # 1,000,000 pixels against 999,990: "1.0 MP; at most 1.0 MP" would read as no breach at all.
    with pytest.raises(LimitExceeded) as caught:
        check_request(Shape(width=1000, height=1000, count=1), JobLimits(max_megapixels_per_job=0.99999))
    assert "1.00000 MP" in caught.value.message and "0.99999 MP" in caught.value.message


def test_steps_breach_names_the_limit() -> None:
    with pytest.raises(LimitExceeded) as caught:
        check_request(Shape(steps=51), JobLimits(max_steps=50))
    assert caught.value.message == "steps is 51; this service allows at most 50 steps per job (DF_MAX_STEPS)"
    assert caught.value.details == {"limit": "DF_MAX_STEPS", "max": 50, "requested": 51, "field": "steps"}
    check_request(Shape(steps=50), JobLimits(max_steps=50))


def test_settings_read_the_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DF_MAX_MEGAPIXELS_PER_JOB", "0")
    monkeypatch.setenv("DF_MAX_STEPS", "50")
    monkeypatch.setenv("DF_MAX_QUEUED_JOBS", "0")
    settings = Settings(_env_file=None)
    assert (settings.max_megapixels_per_job, settings.max_steps, settings.max_queued_jobs) == (0, 50, 0)
    monkeypatch.setenv("DF_MAX_STEPS", "201")
    with pytest.raises(ValidationError, match="max_steps"):
        Settings(_env_file=None)


def test_queue_full_carries_retry_after_and_survives_pickling() -> None:
    err = QueueFull(3, 3)
    assert (err.code, err.status) == ("queue_full", 429)
    assert err.headers == {"Retry-After": str(QUEUE_FULL_RETRY_AFTER_SECONDS)}
    assert err.details == {
        "limit": "DF_MAX_QUEUED_JOBS",
        "max": 3,
        "queued": 3,
        "retry_after_seconds": QUEUE_FULL_RETRY_AFTER_SECONDS,
    }
    assert "DF_MAX_QUEUED_JOBS" in err.message
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.headers, copy.details, copy.message) == (err.headers, err.details, err.message)


def test_api_sends_error_headers_with_the_request_id() -> None:
    app = FastAPI()
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)

    @app.get("/full")
    def full() -> None:
        raise QueueFull(1, 1)

    @app.get("/big")
    def big() -> None:
        check_request(Shape(steps=11), JobLimits(max_steps=10))

    with TestClient(app) as client:
        response = client.get("/full", headers={REQUEST_ID_HEADER: "req-1"})
        assert response.status_code == 429
        assert response.headers["Retry-After"] == str(QUEUE_FULL_RETRY_AFTER_SECONDS)
        assert response.headers[REQUEST_ID_HEADER] == "req-1"
        assert response.json()["code"] == "queue_full"
        assert response.json()["correlation_id"] == "req-1"
        response = client.get("/big")
        assert response.status_code == 422 and "Retry-After" not in response.headers
        assert response.json()["details"]["limit"] == "DF_MAX_STEPS"
