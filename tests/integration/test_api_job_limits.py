"""Job limits against a real `dreamforge serve`: per-job caps (422) and the queue cap (429)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import make_server_env
from support import ServerProcess

# Small caps, still roomy enough for a blocker job that keeps the in-process worker busy: 64x64 x 4
# images is 16,384 pixels (of 20,000), at up to 150 steps each.
LIMITS = {"DF_MAX_MEGAPIXELS_PER_JOB": "0.02", "DF_MAX_STEPS": "150", "DF_MAX_QUEUED_JOBS": "1"}
SMALL = {"type": "generate", "prompt": "a lighthouse at dawn", "width": 64, "height": 64, "steps": 3}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[httpx.Client]:
    data_dir = tmp_path_factory.mktemp("limits") / "var"
    server = ServerProcess(data_dir=data_dir, env=make_server_env(data_dir, tiny_model_dir, **LIMITS)).start()
    try:
        with httpx.Client(base_url=server.base, timeout=30) as client:
            yield client
    finally:
        # The blocker may still be rendering: nothing here needs it to finish.
        server.kill()


def _wait_for_status(api: httpx.Client, job_id: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (current := api.get(f"/jobs/{job_id}").json()["status"]) != status:
        assert time.monotonic() < deadline, f"job {job_id} stayed {current}, never {status}"
        time.sleep(0.05)


def test_limits_reject_new_jobs_but_never_a_replay(api: httpx.Client) -> None:
    too_big = api.post("/jobs", json={**SMALL, "width": 128, "height": 128, "count": 2})
    assert too_big.status_code == 422, too_big.text
    body = too_big.json()
    assert body["code"] == "limit_exceeded"
    assert "DF_MAX_MEGAPIXELS_PER_JOB" in body["message"]
    assert body["details"] == {
        "limit": "DF_MAX_MEGAPIXELS_PER_JOB",
        "max": 0.02,
        "requested": 0.032768,
        "field": "width*height*count",
    }
    assert body["correlation_id"] == too_big.headers["X-Request-Id"]

    too_long = api.post("/jobs", json={**SMALL, "steps": 151})
    assert too_long.status_code == 422, too_long.text
    assert too_long.json()["code"] == "limit_exceeded"
    assert too_long.json()["details"] == {
        "limit": "DF_MAX_STEPS",
        "max": 150,
        "requested": 151,
        "field": "steps",
    }
    assert "DF_MAX_STEPS" in too_long.json()["message"]

    # One job running keeps the worker busy; the next one waits in the queue, which then is full.
    blocker = api.post("/jobs", json={**SMALL, "count": 4, "steps": 150}).json()["job"]["id"]
    _wait_for_status(api, blocker, "running")
    key = {"Idempotency-Key": "limits-queued-1"}
    queued = api.post("/jobs", json=SMALL, headers=key)
    assert queued.status_code == 202, queued.text
    queued_id = queued.json()["job"]["id"]

    full = api.post("/jobs", json={**SMALL, "prompt": "one too many"})
    assert full.status_code == 429, full.text
    assert full.headers["Retry-After"] == "10"
    assert full.json()["code"] == "queue_full"
    assert full.json()["details"]["limit"] == "DF_MAX_QUEUED_JOBS"
    assert full.json()["details"]["max"] == 1
    assert full.json()["correlation_id"] == full.headers["X-Request-Id"]

    # A replay of the queued job is not a new job: it is answered as before, full queue or not.
    replay = api.post("/jobs", json=SMALL, headers=key)
    assert replay.status_code == 202, replay.text
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["job"]["id"] == queued_id

    # The premise held throughout: the blocker still ran and the second job still waited.
    assert api.get(f"/jobs/{blocker}").json()["status"] == "running"
    assert api.get(f"/jobs/{queued_id}").json()["status"] == "queued"
