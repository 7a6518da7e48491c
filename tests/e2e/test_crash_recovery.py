"""A server killed mid-job resumes it on restart: no job stuck, no artifact lost or doubled."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from conftest import make_server_env, register_upscaler_file
from support import ServerProcess, wait_for_status, wait_until

from dreamforge.db.session import create_db_engine, make_session_factory
from dreamforge.jobs import repository as jobs_repo


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


def test_a_crash_between_the_stages_of_item_1_keeps_item_0_and_redoes_item_1(
    tmp_path: Path, tiny_model_dir: Path, tiny_upscalers: dict[int, Path]
) -> None:
    data_dir = tmp_path / "var"
    env = make_server_env(data_dir, tiny_model_dir)
    db_url = f"sqlite:///{data_dir / 'dreamforge.db'}"
    register_upscaler_file(db_url, tiny_upscalers[2], "tiny-esrgan-x2")
    # The server process dies the moment it is about to upscale item 1 (its second upscale).
    fault = [sys.executable, str(Path(__file__).parents[1] / "fault_worker.py")]
    fault += ["die-before-upscale:1", str(tmp_path / "fired"), "--"]
    first = ServerProcess(data_dir=data_dir, env=env, command=fault).start()
    body = {
        "type": "generate",
        "prompt": "a stone bridge in fog",
        "width": 64,
        "height": 64,
        "steps": 3,
        "count": 2,
        "seed": 500,
        "seed_strategy": "sequential",
        "batch_invariant": True,
        "upscale": {"scale": 2},
    }
    try:
        with httpx.Client(base_url=first.base, timeout=30) as client:
            job_id = client.post("/jobs", json=body).json()["job"]["id"]
        wait_until(lambda: first.proc is not None and first.proc.poll() is not None, "server never died", 120)
        assert first.proc is not None and first.proc.returncode == 137, first.log_text()
    finally:
        first.kill()

    engine = create_db_engine(db_url)
    try:
        with make_session_factory(engine)() as s:
            before = [
                (a.item_index, a.stage, a.id, a.sha256)
                for a in jobs_repo.list_artifacts(s, uuid.UUID(job_id))
            ]
            item1 = jobs_repo.get_item(s, uuid.UUID(job_id), 1)
            assert item1 is not None and (item1.status, item1.stage) == ("running", "upscale")
    finally:
        engine.dispose()
    assert [(i, stage) for i, stage, *_ in before] == [(0, "final")]

    with _after_restart(first, job_id) as (client, done):
        assert done["attempts"] == 2
        assert [s["status"] for s in done["steps"]] == ["succeeded", "succeeded"]
        after = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"]
        assert [(a["item_index"], a["width"], a["seed"]) for a in after] == [(0, 128, 500), (1, 128, 501)]
        assert (after[0]["id"], after[0]["sha256"]) == (str(before[0][2]), before[0][3])  # kept, not redone
        logs = client.get(f"/jobs/{job_id}/logs").text
        # Item 1 was generated again (from its recorded seed), then upscaled.
        assert logs.count("item 1: rendering with seed 501") == 2
        assert logs.count("item 1: upscale done") == 1
