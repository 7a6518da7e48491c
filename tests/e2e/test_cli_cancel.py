"""`dreamforge job cancel` as a user runs it: the real CLI as a subprocess against a real server.

Runs against both topologies (the `server` fixture). A "long" job is 3 items of 200 steps at 256x256,
rendered one after another (`--batch-invariant`): long enough to still be rendering when the cancel
arrives (a CLI process that starts in seconds on a busy machine), which stops it within one step.
"""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from pathlib import Path

import httpx
from PIL import Image
from support import DREAMFORGE, ROOT, df, wait_until

LONG = ["--width", "256", "--height", "256", "--steps", "200", "--count", "3", "--batch-invariant"]
SMALL = ["--width", "64", "--height", "64", "--steps", "3"]


def _create(env: dict[str, str], *args: str) -> str:
    created = df(env, "job", "create", "--prompt", "a long render of a lighthouse", *args)
    assert created.code == 0, created.stderr
    job_id: str = created.json["job"]["id"]
    return job_id


def _wait_for_first_progress(client: httpx.Client, job_id: str) -> None:
    def rendering() -> bool:
        body = client.get(f"/jobs/{job_id}/progress").json()
        assert body["status"] in ("queued", "running"), f"job {job_id} ended before it was canceled: {body}"
        return bool(body["progress"] > 0)

    wait_until(rendering, f"job {job_id} made no progress", timeout=120)


def test_cancel_wait_stops_a_running_job_and_keeps_finished_items(
    env: dict[str, str], client: httpx.Client, tmp_path: Path
) -> None:
    job_id = _create(env, *LONG)
    _wait_for_first_progress(client, job_id)

    run = df(env, "job", "cancel", job_id, "--wait")
    assert run.code == 0, run.stderr
    final = run.json
    assert final["id"] == job_id
    assert final["status"] == "canceled"
    assert final["cancel_requested_at"] is not None  # it was running: the worker stopped it
    assert final["finished_at"] is not None
    done = final["summary"]["completed"]
    assert 0 <= done < 3
    assert f"job {job_id} canceled: {done} of 3 image(s) finished before it stopped" in run.stderr

    # Idempotent: cancelling a canceled job is accepted again and changes nothing.
    again = df(env, "job", "cancel", job_id, "-q")
    assert again.code == 0, again.stderr
    assert again.json["status"] == "canceled"
    assert again.json["finished_at"] == final["finished_at"]
    assert again.stderr == ""
    table = df(env, "job", "cancel", job_id, "--wait", "-o", "table")
    assert table.code == 0, table.stderr
    assert "canceled" in table.stdout and "cancel requested" in table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) <= 80

    # Only the items finished before the cancel are listed, and each one downloads whole.
    out = tmp_path / "kept"
    listed = df(env, "job", "artifacts", job_id, "--download", str(out))
    assert listed.code == 0, listed.stderr
    records = listed.json["artifacts"]
    assert sorted(r["item_index"] for r in records) == list(range(done))
    for record in records:
        assert record["downloaded"] is True
        data = Path(record["path"]).read_bytes()
        assert len(data) == record["size_bytes"]
        assert Image.open(io.BytesIO(data)).size == (256, 256)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{r['item_index']}.png" for r in records)

    # The commands that follow a job to its end exit 4 for a canceled one, not as an error.
    stream = df(env, "job", "progress", job_id, "--stream")
    assert stream.code == 4, stream.stderr
    assert stream.lines[-1]["event"] == "done"
    assert stream.lines[-1]["data"]["status"] == "canceled" and "error" not in stream.lines[-1]["data"]
    assert not [e for e in stream.lines if e["event"] == "error"]
    follow = df(env, "job", "logs", job_id, "--follow")
    assert follow.code == 4, follow.stderr
    assert any("cancel" in line["message"] for line in follow.lines)
    assert f"job {job_id} canceled" in follow.stderr
    status = df(env, "job", "status", job_id)
    assert status.code == 0 and status.json["status"] == "canceled"


def test_cancel_of_a_finished_job_exits_1_with_job_finished(env: dict[str, str]) -> None:
    run = df(env, "job", "create", "--prompt", "a small render", *SMALL, "--wait", "-q")
    assert run.code == 0, run.stderr
    job_id = run.json["job"]["id"]
    assert run.json["job"]["status"] == "succeeded"

    for extra in ([], ["--wait"]):
        cancel = df(env, "job", "cancel", job_id, *extra)
        assert cancel.code == 1, cancel.stderr
        assert cancel.stdout == ""
        assert cancel.error["code"] == "job_finished"
        assert cancel.error["details"] == {"status": "succeeded"}
        assert cancel.error["correlation_id"]
    assert df(env, "job", "status", job_id).json["status"] == "succeeded"

    unknown = df(env, "job", "cancel", str(uuid.uuid4()))
    assert unknown.code == 1 and unknown.error["code"] == "not_found"
    bad = df(env, "job", "cancel", "not-a-uuid")
    assert bad.code == 2 and bad.stdout == ""


def test_create_wait_exits_4_when_another_process_cancels_the_job(
    env: dict[str, str], client: httpx.Client, tmp_path: Path
) -> None:
    # The same Idempotency-Key and parameters name the same job: create it, then follow it with
    # `create --wait` in one process while another cancels it.
    args = [*LONG, "--idempotency-key", f"cancel-{uuid.uuid4()}"]
    job_id = _create(env, *args)
    stderr_path = tmp_path / "follower.stderr"
    with stderr_path.open("w") as stderr:
        follower = subprocess.Popen(
            [DREAMFORGE, "job", "create", "--prompt", "a long render of a lighthouse", *args, "--wait"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=ROOT,
        )
        try:
            # The follower is on the stream once it has shown the job running.
            wait_until(
                lambda: f"job {job_id}: running" in stderr_path.read_text(),
                f"`job create --wait` never showed job {job_id} running",
                timeout=120,
            )
            _wait_for_first_progress(client, job_id)
            cancel = df(env, "job", "cancel", job_id)
            assert cancel.code == 0, cancel.stderr
            assert cancel.json["status"] in ("running", "canceled")
            assert cancel.json["cancel_requested_at"] is not None
            out, _ = follower.communicate(timeout=120)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait(10)
    note = stderr_path.read_text()
    assert follower.returncode == 4, note
    result = json.loads(out)
    job = result["job"]
    assert job["id"] == job_id and job["status"] == "canceled"
    assert len(result["artifacts"]) == job["summary"]["completed"] < 3
    assert "the existing job for this Idempotency-Key" in note  # it followed the job created above
    assert f"job {job_id} canceled: {job['summary']['completed']} of 3 image(s)" in note
    assert "error:" not in note
