"""A server killed mid-job resumes it on restart: no job stuck, no artifact lost or doubled."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from conftest import make_server_env
from support import ServerProcess, wait_for_status


def test_sigkill_mid_job_then_restart_finishes_the_job(tmp_path: Path, tiny_model_dir: Path) -> None:
    data_dir = tmp_path / "var"
    env = make_server_env(data_dir, tiny_model_dir)
    first = ServerProcess(data_dir=data_dir, env=env).start()
    body = {
        "type": "generate",
        "prompt": "a storm at sea",
        "width": 128,
        "height": 128,
        "steps": 60,
        "count": 3,
    }
    try:
        with httpx.Client(base_url=first.base, timeout=30) as client:
            job_id = client.post("/jobs", json=body).json()["job"]["id"]
            queued_id = client.post("/jobs", json={**body, "count": 1, "steps": 2}).json()["job"]["id"]
            deadline = time.monotonic() + 120
            while client.get(f"/jobs/{job_id}").json()["summary"]["completed"] < 1:
                assert time.monotonic() < deadline, "first item never finished"
                time.sleep(0.05)
            before = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"]
            assert client.get(f"/jobs/{job_id}").json()["status"] == "running"
    finally:
        first.kill()

    second = ServerProcess(data_dir=data_dir, env=env, port=first.port).start()
    try:
        with httpx.Client(base_url=second.base, timeout=30) as client:
            done = wait_for_status(client, job_id, {"succeeded", "failed"}, timeout=180)
            assert done["status"] == "succeeded", done
            assert done["attempts"] == 2
            after = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"]
            assert [a["item_index"] for a in after] == [0, 1, 2]
            assert after[0]["id"] == before[0]["id"]  # the finished item was kept, not redone
            for art in after:
                assert httpx.get(art["url"]).status_code == 200
            # The job queued behind it when the server died runs too.
            assert wait_for_status(client, queued_id, {"succeeded", "failed"})["status"] == "succeeded"
            logs = client.get(f"/jobs/{job_id}/logs").text
            assert "re-queued" in logs
    finally:
        second.stop()
