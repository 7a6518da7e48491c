"""The distributed topology under faults: workers killed and stopped, the broker gone, many API replicas.

Real processes throughout: `dreamforge serve` and `dreamforge worker` subprocesses, Postgres and
Redis on loopback, and moto's S3 server as the artifact store.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import Stack, distributed_stack, pg_port
from s3_server import MotoS3
from support import (
    RedisServer,
    TcpProxy,
    assert_artifacts_downloadable,
    iter_sse,
    read_sse,
    wait_for_status,
    wait_until,
)

JOB: dict[str, Any] = {"type": "generate", "prompt": "a lantern in fog", "width": 64, "height": 64}


@pytest.fixture
def stack(tmp_path: Path, tiny_model_dir: Path, moto_s3: MotoS3) -> Iterator[Stack]:
    """A fresh distributed stack (one API, one worker) for a test that breaks things."""
    with distributed_stack(tmp_path / "var", tiny_model_dir, moto_s3) as s:
        yield s


def test_artifacts_are_private_objects_behind_presigned_urls(stack: Stack, moto_s3: MotoS3) -> None:
    with httpx.Client(base_url=stack.base, timeout=30) as client:
        job_id = client.post("/jobs", json={**JOB, "steps": 2, "count": 2}).json()["job"]["id"]
        wait_for_status(client, job_id, {"succeeded"})
        artifacts = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"]
    assert moto_s3.keys(stack.bucket, f"jobs/{job_id}/") == [
        f"jobs/{job_id}/0.png",
        f"jobs/{job_id}/1.png",
    ]
    for art in artifacts:
        url = urlsplit(art["url"])
        assert f"{url.scheme}://{url.netloc}" == moto_s3.endpoint
        assert url.path == f"/{stack.bucket}/{art['s3_key']}"
        query = parse_qs(url.query)
        assert query["X-Amz-Expires"] == ["900"]
        assert "X-Amz-Signature" in query
        remaining = datetime.fromisoformat(art["expires_at"]).timestamp() - time.time()
        assert 880 < remaining <= 900
    assert_artifacts_downloadable(artifacts)
    head = moto_s3.client().head_object(Bucket=stack.bucket, Key=artifacts[0]["s3_key"])
    assert head["ContentType"] == "image/png"


def test_worker_killed_mid_job_another_worker_finishes_it(stack: Stack, moto_s3: MotoS3) -> None:
    with httpx.Client(base_url=stack.base, timeout=30) as client:
        # One item per call, so items finish (and survive the kill) one at a time.
        body = {**JOB, "steps": 60, "count": 3, "batch_invariant": True}
        job_id = client.post("/jobs", json=body).json()["job"]["id"]
        wait_until(
            lambda: client.get(f"/jobs/{job_id}").json()["summary"]["completed"] >= 1,
            "first item never finished",
        )
        before = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"]
        assert client.get(f"/jobs/{job_id}").json()["status"] == "running"
        stack.workers[0].kill()

        stack.add_worker()
        done = wait_for_status(client, job_id, {"succeeded", "failed"}, timeout=180)
        assert done["status"] == "succeeded", done
        # The job's own log says which worker started each attempt, and why one ended.
        assert done["attempts"] == 2, client.get(f"/jobs/{job_id}/logs").text
        after = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"]
        logs = client.get(f"/jobs/{job_id}/logs").text

    assert [a["item_index"] for a in after] == [0, 1, 2]
    assert after[0]["id"] == before[0]["id"]  # the finished item was kept, not redone
    assert moto_s3.keys(stack.bucket, f"jobs/{job_id}/") == [f"jobs/{job_id}/{i}.png" for i in range(3)]
    assert_artifacts_downloadable(after)
    assert "re-queued" in logs
    assert logs.count("started on") == 2


def test_worker_stopped_gracefully_requeues_on_its_queue_without_using_an_attempt(
    tmp_path: Path, tiny_model_dir: Path, moto_s3: MotoS3
) -> None:
    # The workers get their queue from `--queue` alone: a job re-queued at shutdown must go back
    # there (not to DF_QUEUE), or no worker would ever pick it up again.
    with (
        distributed_stack(tmp_path / "var", tiny_model_dir, moto_s3, workers=0) as stack,
        httpx.Client(base_url=stack.base, timeout=30) as client,
    ):
        stack.add_worker(queue_flag=True)
        job_id = client.post("/jobs", json={**JOB, "steps": 200, "width": 128, "height": 128}).json()["job"][
            "id"
        ]
        wait_until(lambda: client.get(f"/jobs/{job_id}/progress").json()["progress"] > 0, "never started")
        stopped_at = time.monotonic()
        stack.workers[0].stop()
        assert time.monotonic() - stopped_at < 15, "graceful stop took too long"
        assert stack.workers[0].proc is not None and stack.workers[0].proc.returncode == 0
        assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"

        stack.add_worker(queue_flag=True)
        done = wait_for_status(client, job_id, {"succeeded", "failed"}, timeout=180)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 1
        assert "shutting down" in client.get(f"/jobs/{job_id}/logs").text


def test_broker_outage_answers_503_then_recovers(
    tmp_path: Path, tiny_model_dir: Path, moto_s3: MotoS3
) -> None:
    try:
        redis = RedisServer(tmp_path / "redis").start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        with (
            distributed_stack(tmp_path / "var", tiny_model_dir, moto_s3, DF_REDIS_URL=redis.url) as stack,
            httpx.Client(base_url=stack.base, timeout=30) as client,
        ):
            first = client.post("/jobs", json={**JOB, "steps": 2}).json()["job"]["id"]
            assert wait_for_status(client, first, {"succeeded", "failed"})["status"] == "succeeded"

            redis.stop()
            refused = client.post("/jobs", json={**JOB, "steps": 2}, headers={"Idempotency-Key": "outage-1"})
            assert refused.status_code == 503
            # Publishing fails fast instead of hanging the client on a dead broker.
            assert refused.elapsed.total_seconds() < 5
            body = refused.json()
            assert body["code"] == "broker_unavailable"
            assert body["details"]["component"] == "broker"
            assert body["correlation_id"] == refused.headers["x-request-id"]
            # Reads need only the database; readiness names the broker as the problem.
            assert client.get(f"/jobs/{first}").json()["status"] == "succeeded"
            assert client.get(f"{stack.api.root}/healthz").status_code == 200
            ready = client.get(f"{stack.api.root}/readyz")
            assert ready.status_code == 503
            assert ready.json()["details"]["failed"] == ["broker"]

            redis = RedisServer(tmp_path / "redis", port=redis.port).start()
            wait_until(
                lambda: client.get(f"{stack.api.root}/readyz").status_code == 200,
                "API never saw the broker return",
            )
            # The refused request kept nothing: retrying with its key makes a new job, which runs.
            retried = client.post("/jobs", json={**JOB, "steps": 2}, headers={"Idempotency-Key": "outage-1"})
            assert retried.status_code == 202
            assert "idempotent-replayed" not in retried.headers
            job_id = retried.json()["job"]["id"]
            assert wait_for_status(client, job_id, {"succeeded", "failed"})["status"] == "succeeded"
    finally:
        redis.stop()


def test_events_reach_every_api_replica_live_and_survive_an_api_restart(stack: Stack) -> None:
    second_api = stack.add_api()
    try:
        with httpx.Client(base_url=second_api.base, timeout=30) as other:
            job_id = httpx.post(f"{stack.base}/jobs", json={**JOB, "steps": 150}, timeout=30).json()["job"][
                "id"
            ]
            delays: list[float] = []
            kinds: list[str] = []
            with other.stream("GET", f"/jobs/{job_id}/progress/stream") as response:
                for item in iter_sse(response):
                    if isinstance(item, str):
                        continue
                    kinds.append(item.event)
                    if item.event == "progress":
                        sent = datetime.fromisoformat(item.data["ts"]).timestamp()
                        delays.append(time.time() - sent)
                    if item.event == "done":
                        break
            assert kinds[-1] == "done"
            # Written by the worker, seen by a replica that has no part in the job. Polling alone
            # would give a median near half a second; pub/sub wakes the stream at once.
            assert len(delays) >= 5
            assert statistics.median(delays) < 0.35, delays
    finally:
        second_api.stop()

    stack.api.stop()
    stack.api = stack.api.restarted()
    with httpx.Client(base_url=stack.base, timeout=30) as client:
        replay = read_sse(client, f"/jobs/{job_id}/progress/stream")
    assert [e.event for e in replay] == kinds


def test_database_outage_answers_503_then_recovers(
    tmp_path: Path, tiny_model_dir: Path, moto_s3: MotoS3
) -> None:
    proxy = TcpProxy(pg_port()).start()
    try:
        with (
            distributed_stack(
                tmp_path / "var", tiny_model_dir, moto_s3, workers=0, db_port=proxy.port
            ) as stack,
            httpx.Client(base_url=stack.base, timeout=30) as client,
        ):
            job_id = client.post("/jobs", json={**JOB, "steps": 2}).json()["job"]["id"]

            proxy.cut()
            for response in (
                client.get(f"/jobs/{job_id}"),
                client.get(f"/jobs/{job_id}/artifacts"),
                client.post("/jobs", json={**JOB, "steps": 2}),
            ):
                assert response.status_code == 503, response.text
                body = response.json()
                assert body["code"] == "database_unavailable"
                assert body["details"]["component"] == "database"
                assert body["correlation_id"] == response.headers["x-request-id"]
            ready = client.get(f"{stack.api.root}/readyz")
            assert ready.status_code == 503
            assert ready.json()["details"]["failed"] == ["database"]

            proxy.start()
            wait_until(lambda: client.get(f"/jobs/{job_id}").status_code == 200, "API never reconnected")
            assert client.get(f"{stack.api.root}/readyz").status_code == 200
            # The job accepted before the outage is still there and runs once a worker comes.
            stack.add_worker()
            assert wait_for_status(client, job_id, {"succeeded", "failed"})["status"] == "succeeded"
    finally:
        proxy.cut()


def test_a_worker_whose_gpu_fails_exits_and_the_next_worker_finishes_the_job(
    tmp_path: Path, tiny_model_dir: Path, moto_s3: MotoS3
) -> None:
    fault = [
        sys.executable,
        str(Path(__file__).parents[1] / "fault_worker.py"),
        "gpu",
        str(tmp_path / "fired"),
        "--",
    ]
    with (
        distributed_stack(tmp_path / "var", tiny_model_dir, moto_s3, workers=0) as stack,
        httpx.Client(base_url=stack.base, timeout=30) as client,
    ):
        faulty = stack.add_worker(command=fault)
        job_id = client.post("/jobs", json={**JOB, "steps": 3}).json()["job"]["id"]
        assert faulty.proc is not None
        wait_until(
            lambda: faulty.proc is not None and faulty.proc.poll() is not None, "worker did not exit", 60
        )
        assert faulty.proc.returncode == 70, faulty.log_text()
        job = client.get(f"/jobs/{job_id}").json()
        assert (job["status"], job["attempts"]) == ("queued", 1)

        # The next worker finishes it; with DF_WORKER_MAX_JOBS=1 it then leaves for a fresh process.
        recycled = stack.add_worker(DF_WORKER_MAX_JOBS="1")
        done = wait_for_status(client, job_id, {"succeeded", "failed"})
        assert (done["status"], done["attempts"]) == ("succeeded", 2), done
        assert "the GPU failed" in client.get(f"/jobs/{job_id}/logs").text
        wait_until(lambda: recycled.proc is not None and recycled.proc.poll() is not None, "no recycle", 60)
        assert recycled.proc is not None and recycled.proc.returncode == 75, recycled.log_text()
