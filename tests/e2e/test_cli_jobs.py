"""`dreamforge job ...` as a user runs it: the real CLI as a subprocess against a real server.

Runs against both topologies (the `server` fixture): embedded, and API + Celery worker + Postgres +
Redis + moto's S3, where `--download` fetches presigned S3 URLs.
"""

from __future__ import annotations

import io
import shutil
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Stack, register_tiny
from PIL import Image
from sqlalchemy import text
from support import cli_env, df, free_port

from dreamforge.db.session import create_db_engine
from dreamforge.recipe.embed import read_metadata
from dreamforge.recipe.infotext import parse_infotext

SMALL = ["--width", "64", "--height", "64", "--steps", "3"]


def _create_and_wait(env: dict[str, str], *extra: str) -> dict[str, Any]:
    run = df(env, "job", "create", "--prompt", "a lighthouse at dawn", *SMALL, *extra, "--wait", "-q")
    assert run.code == 0, run.stderr
    job: dict[str, Any] = run.json["job"]
    return job


def test_create_wait_then_download_artifacts(env: dict[str, str], tmp_path: Path) -> None:
    run = df(
        env,
        "job", "create", "--prompt", "a lighthouse at dawn", "--negative-prompt", "blurry",
        *SMALL, "--count", "2", "--seed", "42", "--batch-invariant", "--wait",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    job, listed = run.json["job"], run.json["artifacts"]
    assert job["status"] == "succeeded"
    assert job["summary"] == {"count": 2, "completed": 2}
    assert [a["item_index"] for a in listed] == [0, 1]
    # stderr is not a terminal: plain progress lines, then where to get the images.
    assert f"job {job['id']}: running" in run.stderr
    assert "item 1: stored" in run.stderr
    assert f"dreamforge job artifacts {job['id']} --download DIR" in run.stderr

    out = tmp_path / "images"
    run = df(env, "job", "artifacts", job["id"], "--download", str(out))
    assert run.code == 0, run.stderr
    records = run.json["artifacts"]
    assert [(r["path"], r["downloaded"]) for r in records] == [
        (str(out / "0.png"), True),
        (str(out / "1.png"), True),
    ]
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png"]
    for record in records:
        data = (out / f"{record['item_index']}.png").read_bytes()
        assert len(data) == record["size_bytes"]
        assert Image.open(io.BytesIO(data)).size == (64, 64)
        prompt, negative, params = parse_infotext(read_metadata(data).infotext or "")
        assert (prompt, negative) == ("a lighthouse at dawn", "blurry")
        assert params["Seed"] == str(record["seed"])
        assert params["Size"] == "64x64"
        # --batch-invariant: each item rendered alone, as its recipe records.
        recipe = read_metadata(data).recipe or {}
        assert (recipe["batch_invariant"], recipe["batch"]["size"]) == (True, 1)
    assert records[0]["seed"] == 42

    # Again: both files are there with the right size, so nothing is fetched.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "1.png").write_bytes(b"truncated")
    run = df(env, "job", "artifacts", job["id"], "--download", str(out))
    assert run.code == 0, run.stderr
    assert [r["downloaded"] for r in run.json["artifacts"]] == [False, True]
    assert "skipped 0.png" in run.stderr
    assert (out / "0.png").stat().st_mtime_ns == mtimes["0.png"]
    assert Image.open(out / "1.png").size == (64, 64)
    assert not list(out.glob("*.part"))

    run = df(env, "job", "artifacts", job["id"], "--download", str(out), "--output", "table")
    assert run.code == 0, run.stderr
    # A long path wraps inside its column: read the table without its line breaks and padding.
    assert "1.png" in "".join(run.stdout.split()) and "10," in run.stdout
    assert max(len(line) for line in run.stdout.splitlines()) <= 80


def test_status_and_progress(env: dict[str, str]) -> None:
    job = _create_and_wait(env, "--count", "2")

    status = df(env, "job", "status", job["id"])
    assert status.code == 0 and status.json["status"] == "succeeded"
    assert status.json["summary"] == {"count": 2, "completed": 2}

    progress = df(env, "job", "progress", job["id"])
    assert progress.code == 0
    assert progress.json["progress"] == 1.0
    assert [i["item_index"] for i in progress.json["items"]] == [0, 1]

    for args in (["status"], ["progress"]):
        table = df(env, "job", *args, job["id"], "-o", "table")
        assert table.code == 0, table.stderr
        assert "succeeded" in table.stdout
        assert max(len(line) for line in table.stdout.splitlines()) <= 80


def test_progress_stream_in_json_mode_prints_one_event_per_line(env: dict[str, str]) -> None:
    created = df(env, "job", "create", "--prompt", "a lighthouse", *SMALL, "--count", "2")
    assert created.code == 0, created.stderr
    job_id = created.json["job"]["id"]
    assert created.json["job"]["status"] == "queued"

    run = df(env, "job", "progress", job_id, "--stream")
    assert run.code == 0, run.stderr
    events = run.lines
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert events[0]["event"] == "status" and events[0]["data"]["status"] == "queued"
    assert events[-1]["event"] == "done" and events[-1]["data"]["status"] == "succeeded"
    progress = [e["data"] for e in events if e["event"] == "progress"]
    assert {p["item_index"] for p in progress} == {0, 1}
    assert progress[-1]["overall"] == 1.0
    assert sum(e["event"] == "artifact" for e in events) == 2


def test_logs_tail_since_and_follow(env: dict[str, str]) -> None:
    job = _create_and_wait(env)
    everything = df(env, "job", "logs", job["id"])
    assert everything.code == 0, everything.stderr
    lines = everything.lines
    assert len(lines) >= 4
    assert lines[-1]["message"].startswith("job succeeded")
    assert all(line["job_id"] == job["id"] for line in lines)

    tail = df(env, "job", "logs", job["id"], "--tail", "2")
    assert tail.lines == lines[-2:]

    cut = datetime.fromisoformat(lines[2]["ts"])
    since = df(env, "job", "logs", job["id"], "--since", lines[2]["ts"])
    assert since.lines == [line for line in lines if datetime.fromisoformat(line["ts"]) >= cut]
    assert df(env, "job", "logs", job["id"], "--since", "1h").lines == lines

    # The job has ended: --follow prints everything and stops.
    follow = df(env, "job", "logs", job["id"], "--follow")
    assert follow.code == 0, follow.stderr
    assert follow.lines == lines

    table = df(env, "job", "logs", job["id"], "--output", "table")
    assert "job succeeded" in table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) <= 80


def test_idempotent_create_twice_gives_one_job(env: dict[str, str]) -> None:
    key = f"order-{uuid.uuid4()}"
    args = ["job", "create", "--prompt", "a red bicycle", *SMALL, "--idempotency-key", key]
    first, second = df(env, *args), df(env, *args)
    assert first.code == 0 and second.code == 0, (first.stderr, second.stderr)
    assert first.json["job"]["id"] == second.json["job"]["id"]
    assert "existing job for this Idempotency-Key" in second.stderr

    other = df(env, "job", "create", "--prompt", "a blue bicycle", *SMALL, "--idempotency-key", key)
    assert other.code == 1 and other.stdout == ""
    assert other.error["code"] == "idempotency_key_reused"
    assert other.error["details"]["job_id"] == first.json["job"]["id"]


def test_api_errors_print_the_error_response_and_exit_1(env: dict[str, str]) -> None:
    run = df(env, "job", "create", "--prompt", "a cat", "--width", "100", "--height", "64")
    assert run.code == 1
    assert run.stdout == ""
    assert run.error["code"] == "validation_error"
    assert run.error["details"]["errors"][0]["field"] == "width"
    assert run.error["correlation_id"]
    assert "Traceback" not in run.stderr

    missing = str(uuid.uuid4())
    run = df(env, "job", "status", missing)
    assert run.code == 1
    assert run.error["code"] == "not_found" and run.error["details"]["id"] == missing


def test_quiet_leaves_stderr_empty(env: dict[str, str]) -> None:
    run = df(env, "job", "create", "--prompt", "a cat", *SMALL, "--wait", "-q")
    assert run.code == 0 and run.stderr == ""
    assert run.json["job"]["status"] == "succeeded"


def test_a_failed_job_exits_4(
    server: Stack, env: dict[str, str], tmp_path: Path, tiny_model_dir: Path
) -> None:
    # A model whose files vanished after it was registered: the job is accepted, then fails.
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    db_url = server.db_url or f"sqlite:///{server.api.data_dir / 'dreamforge.db'}"
    model_id = register_tiny(db_url, broken, name=f"broken-{uuid.uuid4().hex[:6]}")
    shutil.rmtree(broken)
    try:
        run = df(env, "job", "create", "--prompt", "a cat", *SMALL, "--model-id", model_id, "--wait")
    finally:
        # Keep it from becoming the server's default model for the other tests of this module.
        engine = create_db_engine(db_url)
        with engine.begin() as conn:
            conn.execute(text("UPDATE models SET enabled = false WHERE id = :id"), {"id": model_id})
        engine.dispose()
    assert run.code == 4, run.stderr
    job = run.json["job"]
    assert job["status"] == "failed"
    assert job["error"]["code"] == "model_files_missing"
    assert f"job {job['id']} failed: [model_files_missing]" in run.stderr

    stream = df(env, "job", "progress", job["id"], "--stream")
    assert stream.code == 4
    assert stream.lines[-1]["data"]["status"] == "failed"
    assert df(env, "job", "logs", job["id"], "--follow").code == 4
    assert df(env, "job", "status", job["id"]).code == 0


def test_an_unreachable_api_exits_3_with_one_line(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{free_port()}/v1"
    env = cli_env(tmp_path, DF_API_BASE=base)
    job_id = str(uuid.uuid4())
    for args in (
        ["job", "status", job_id],
        ["job", "create", "--prompt", "a cat", *SMALL],
        ["job", "progress", job_id, "--stream"],
        ["job", "artifacts", job_id, "--download", str(tmp_path / "out")],
    ):
        run = df(env, *args)
        assert run.code == 3, (args, run.stderr)
        assert run.stdout == ""
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert base in run.stderr and "connection refused" in run.stderr

    # --api-base wins over DF_API_BASE.
    other = f"http://127.0.0.1:{free_port()}/v1"
    run = df(env, "job", "status", job_id, "--api-base", other)
    assert run.code == 3 and other in run.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["job", "create", "--width", "64", "--height", "64"],  # no --prompt
        ["job", "create", "--prompt", "x", "--width", "64", "--height", "64", "--format", "gif"],
        ["job", "status", "not-a-uuid"],
        ["job", "logs", str(uuid.UUID(int=1)), "--since", "yesterday"],
        ["job", "logs", str(uuid.UUID(int=1)), "--tail", "0"],
        ["job", "status", str(uuid.UUID(int=1)), "--output", "yaml"],
        ["job", "status", str(uuid.UUID(int=1)), "--api-base", "localhost:8001"],
    ],
)
def test_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    run = df(cli_env(tmp_path), *args)
    assert run.code == 2, run.stderr
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
