"""A server killed mid-job resumes it on restart: no job stuck, no artifact lost or doubled."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from conftest import make_server_env
from support import ServerProcess, wait_for_status, wait_until


def _start(tmp_path: Path, tiny_model_dir: Path) -> ServerProcess:
    data_dir = tmp_path / "var"
    return ServerProcess(data_dir=data_dir, env=make_server_env(data_dir, tiny_model_dir)).start()


@contextmanager
def _after_restart(first: ServerProcess, job_id: str) -> Iterator[tuple[httpx.Client, dict[str, Any]]]:
    """Restart on the same data, wait for the job to end; yields a client and the job's final status."""
    second = first.restarted()
    try:
        with httpx.Client(base_url=second.base, timeout=30) as client:
            done = wait_for_status(client, job_id, {"succeeded", "failed"}, timeout=180)
            assert done["status"] == "succeeded", done
            yield client, done
    finally:
        second.stop()


def test_sigkill_mid_job_then_restart_finishes_the_job(tmp_path: Path, tiny_model_dir: Path) -> None:
    first = _start(tmp_path, tiny_model_dir)
    body = {
        "type": "generate",
        "prompt": "a storm at sea",
        "width": 64,
        "height": 64,
        "steps": 80,
        "count": 3,
        # One item per call, so items finish (and survive the crash) one at a time.
        "batch_invariant": True,
    }
    try:
        with httpx.Client(base_url=first.base, timeout=30) as client:
            job_id = client.post("/jobs", json=body).json()["job"]["id"]
            queued_id = client.post("/jobs", json={**body, "count": 1, "steps": 2}).json()["job"]["id"]
            wait_until(
                lambda: client.get(f"/jobs/{job_id}").json()["summary"]["completed"] >= 1,
                "first item never finished",
            )
            before = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"]
            assert client.get(f"/jobs/{job_id}").json()["status"] == "running"
    finally:
        first.kill()

    with _after_restart(first, job_id) as (client, done):
        assert done["attempts"] == 2
        after = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"]
        assert [a["item_index"] for a in after] == [0, 1, 2]
        assert after[0]["id"] == before[0]["id"]  # the finished item was kept, not redone
        for art in after:
            assert httpx.get(art["url"]).status_code == 200
        # The job queued behind it when the server died runs too.
        assert wait_for_status(client, queued_id, {"succeeded", "failed"})["status"] == "succeeded"
        assert "re-queued" in client.get(f"/jobs/{job_id}/logs").text


def test_graceful_stop_requeues_the_running_job_without_using_an_attempt(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    first = _start(tmp_path, tiny_model_dir)
    body = {"type": "generate", "prompt": "a quiet harbour", "width": 64, "height": 64, "steps": 200}
    try:
        with httpx.Client(base_url=first.base, timeout=30) as client:
            job_id = client.post("/jobs", json=body).json()["job"]["id"]
            wait_until(
                lambda: client.get(f"/jobs/{job_id}/progress").json()["progress"] > 0, "job never started"
            )
        stopped_at = time.monotonic()
        first.stop()
        assert time.monotonic() - stopped_at < 12, "graceful stop took too long"
        # uvicorn re-raises the signal after a clean shutdown, so the exit status is -SIGTERM.
        assert first.proc is not None
        assert first.proc.returncode in (0, -15), first.log_text()
    finally:
        first.kill()

    with _after_restart(first, job_id) as (client, done):
        assert done["attempts"] == 1
        assert "shutting down" in client.get(f"/jobs/{job_id}/logs").text
