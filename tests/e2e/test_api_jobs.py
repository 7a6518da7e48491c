"""The v1 job API driven over HTTP, as an integrator would, against `dreamforge serve`."""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import topology_stack
from PIL import Image
from support import read_sse, wait_for_status, wait_until

from dreamforge.recipe.embed import read_metadata
from dreamforge.recipe.infotext import parse_infotext

JOB: dict[str, Any] = {
    "type": "generate",
    "prompt": "a misty forest, golden hour",
    "width": 64,
    "height": 64,
    "steps": 4,
}


def _model(client: httpx.Client) -> dict[str, Any]:
    models = client.get("/models").json()["models"]
    assert len(models) == 1
    model: dict[str, Any] = client.get(f"/models/{models[0]['id']}").json()
    return model


def test_create_follow_and_download_a_batch(client: httpx.Client) -> None:
    body = {**JOB, "count": 2, "seed": 4242, "negative_prompt": "lowres"}
    created = client.post("/jobs", json=body)
    assert created.status_code == 202
    assert created.headers["x-request-id"]
    job = created.json()["job"]
    assert job["status"] == "queued"
    assert job["type"] == "generate"
    datetime.fromisoformat(job["created_at"])

    # Live stream from the start: every event numbered, in order, closing after `done`.
    events = read_sse(client, f"/jobs/{job['id']}/progress/stream")
    ids = [int(e.id or 0) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    kinds = [e.event for e in events]
    assert kinds[0] == "status" and events[0].data["status"] == "queued"
    assert kinds[-1] == "done" and events[-1].data["status"] == "succeeded"
    assert kinds.count("artifact") == 2
    progress = [e.data for e in events if e.event == "progress"]
    assert {p["item_index"] for p in progress} == {0, 1}
    assert all(0 <= p["progress"] <= 1 and 0 <= p["overall"] <= 1 for p in progress)
    assert progress[-1]["overall"] == 1.0
    streamed_artifact = next(e for e in events if e.event == "artifact").data["artifact"]
    assert streamed_artifact["url"].startswith("http")

    status = client.get(f"/jobs/{job['id']}").json()
    assert status["status"] == "succeeded"
    assert status["summary"] == {"count": 2, "completed": 2}
    assert "error" not in status  # unset optional fields are left out, never null

    prog = client.get(f"/jobs/{job['id']}/progress").json()
    assert prog["progress"] == 1.0
    assert [i["item_index"] for i in prog["items"]] == [0, 1]
    assert abs(sum(s["weight"] for s in prog["stages"]) - 1.0) < 1e-9

    artifacts = client.get(f"/jobs/{job['id']}/artifacts").json()["artifacts"]
    assert [a["item_index"] for a in artifacts] == [0, 1]
    assert artifacts[0]["seed"] == 4242
    model = _model(client)
    for art in artifacts:
        assert art["s3_key"] == f"jobs/{job['id']}/{art['item_index']}.png"
        assert datetime.fromisoformat(art["expires_at"]).timestamp() > time.time()
        download = httpx.get(art["url"])
        assert download.status_code == 200
        assert download.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(download.content)) as img:
            assert img.size == (64, 64)
            infotext = img.text["parameters"]  # type: ignore[attr-defined]
        prompt, negative, params = parse_infotext(infotext)
        assert (prompt, negative) == (body["prompt"], "lowres")
        assert params["Seed"] == str(art["seed"])
        assert params["Steps"] == "4"
        assert params["Sampler"] == "DPM++ 2M"
        assert params["Schedule type"] == "Karras"
        assert params["Model hash"] == model["sha256"][:10]
        recipe = read_metadata(download.content).recipe
        assert recipe is not None
        assert recipe["model"]["sha256"] == model["sha256"]
        assert recipe["item_index"] == art["item_index"]


def test_logs_are_ndjson_with_tail_and_since(client: httpx.Client) -> None:
    job_id = client.post("/jobs", json=JOB).json()["job"]["id"]
    wait_for_status(client, job_id, {"succeeded"})
    resp = client.get(f"/jobs/{job_id}/logs")
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in resp.text.splitlines()]
    assert len(lines) >= 4
    assert {"id", "ts", "level", "message", "job_id"} <= lines[0].keys()
    assert "accepted" in lines[0]["message"]
    assert "succeeded" in lines[-1]["message"]

    tail = [json.loads(x) for x in client.get(f"/jobs/{job_id}/logs", params={"tail": 2}).text.splitlines()]
    assert tail == lines[-2:]
    since = lines[2]["ts"]
    later = [
        json.loads(x)
        for x in client.get(f"/jobs/{job_id}/logs", params={"since_ts": since}).text.splitlines()
    ]
    assert later and all(x["ts"] >= since for x in later)
    assert later[-1] == lines[-1]
    bad = client.get(f"/jobs/{job_id}/logs", params={"tail": 0})
    assert bad.status_code == 422


def test_late_subscriber_gets_history_and_last_event_id_resumes(client: httpx.Client) -> None:
    job_id = client.post("/jobs", json={**JOB, "count": 2}).json()["job"]["id"]
    wait_for_status(client, job_id, {"succeeded"})
    url = f"/jobs/{job_id}/progress/stream"
    history = read_sse(client, url)
    assert history[0].event == "status" and history[-1].event == "done"

    cut = len(history) // 2
    resumed = read_sse(client, url, headers={"Last-Event-ID": str(history[cut - 1].id)})
    assert [e.id for e in resumed] == [e.id for e in history[cut:]]

    # A client that dropped mid-stream and reconnects sees every event exactly once.
    first = read_sse(client, url, stop_after=3)
    rest = read_sse(client, url, headers={"Last-Event-ID": str(first[-1].id)})
    assert [e.id for e in first + rest] == [e.id for e in history]

    bad = client.get(url, headers={"Last-Event-ID": "not-a-number"})
    assert bad.status_code == 422
    assert bad.json()["code"] == "validation_error"


def test_idle_stream_sends_keepalive_comments(client: httpx.Client) -> None:
    # A long job ahead in the queue keeps the second one idle.
    long_id = client.post("/jobs", json={**JOB, "width": 128, "height": 128, "steps": 120}).json()["job"][
        "id"
    ]
    waiting_id = client.post("/jobs", json=JOB).json()["job"]["id"]
    comments: list[str] = []
    with client.stream("GET", f"/jobs/{waiting_id}/progress/stream", timeout=30) as resp:
        started = time.monotonic()
        for line in resp.iter_lines():
            if line.startswith(":"):
                comments.append(line)
                break
            if time.monotonic() - started > 20:
                break
    assert comments, "no keep-alive comment within 20 s of an idle stream"
    wait_for_status(client, long_id, {"succeeded"})
    wait_for_status(client, waiting_id, {"succeeded"})


def test_idempotency_key(client: httpx.Client) -> None:
    headers = {"Idempotency-Key": "order-77"}
    first = client.post("/jobs", json=JOB, headers=headers)
    again = client.post("/jobs", json={**JOB, "steps": 4}, headers=headers)  # same body, default spelled out
    assert first.status_code == again.status_code == 202
    assert again.json()["job"]["id"] == first.json()["job"]["id"]
    assert again.headers["idempotent-replayed"] == "true"

    other = client.post("/jobs", json={**JOB, "prompt": "something else"}, headers=headers)
    assert other.status_code == 409
    err = other.json()
    assert err["code"] == "idempotency_key_reused"
    assert err["details"]["job_id"] == first.json()["job"]["id"]
    assert err["correlation_id"] == other.headers["x-request-id"]

    no_key = [client.post("/jobs", json=JOB).json()["job"]["id"] for _ in range(2)]
    assert no_key[0] != no_key[1]


def test_concurrent_requests_with_one_key_make_one_job(client: httpx.Client, server: Any) -> None:
    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.base, timeout=30) as c:
            return c.post("/jobs", json=JOB, headers={"Idempotency-Key": "burst-1"})

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(post, range(8)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["job"]["id"] for r in responses}) == 1


def test_same_seed_same_parameters_same_image(client: httpx.Client) -> None:
    body = {**JOB, "seed": 99, "embed_metadata": False}
    ids = [client.post("/jobs", json=body).json()["job"]["id"] for _ in range(2)]
    blobs = []
    for job_id in ids:
        wait_for_status(client, job_id, {"succeeded"})
        art = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"][0]
        blobs.append(httpx.get(art["url"]).content)
    assert blobs[0] == blobs[1]
    assert read_metadata(blobs[0]).infotext is None


def test_jpeg_carries_infotext_in_exif(client: httpx.Client) -> None:
    job_id = client.post("/jobs", json={**JOB, "format": "jpg", "scheduler": "unipc", "seed": 5}).json()[
        "job"
    ]["id"]
    wait_for_status(client, job_id, {"succeeded"})
    art = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"][0]
    assert art["format"] == "jpg" and art["s3_key"].endswith(".jpg")
    download = httpx.get(art["url"])
    assert download.headers["content-type"] == "image/jpeg"
    infotext = read_metadata(download.content).infotext
    assert infotext is not None
    _, _, params = parse_infotext(infotext)
    assert (params["Sampler"], params["Seed"]) == ("UniPC", "5")


@pytest.mark.parametrize("topology", ["embedded", "distributed"])
def test_the_first_job_loads_the_model_and_the_next_reuses_it(
    request: pytest.FixtureRequest, topology: str, tmp_path: Path
) -> None:
    # A fresh service: the module's shared one has long loaded its model.
    logs = []
    with (
        topology_stack(request, topology, tmp_path / "var") as stack,
        httpx.Client(base_url=stack.base, timeout=30) as client,
    ):
        for _ in range(2):
            job_id = client.post("/jobs", json=JOB).json()["job"]["id"]
            wait_for_status(client, job_id, {"succeeded"})
            logs.append(client.get(f"/jobs/{job_id}/logs").text)
    assert logs[0].count("loaded in") == 1
    assert "loaded in" not in logs[1]


def test_models_endpoints(client: httpx.Client) -> None:
    listed = client.get("/models").json()["models"]
    assert listed[0]["name"] == "tiny-sdxl"
    assert listed[0]["installed"] is True and listed[0]["enabled"] is True
    assert listed[0]["kind"] == "sdxl-checkpoint"
    model = client.get(f"/models/{listed[0]['id']}").json()
    assert "text-to-image" in model["capabilities"]
    assert "noise" in model["note"]
    # The parameters a model advertises are the ones POST /jobs accepts, constraints included.
    params = model["parameters_schema"]["properties"]
    assert set(params) == {"width", "height", "steps", "guidance", "scheduler"}
    assert (params["width"]["minimum"], params["width"]["maximum"], params["width"]["multipleOf"]) == (
        64,
        4096,
        8,
    )
    assert params["scheduler"]["enum"] == ["dpmpp_2m_karras", "unipc"]
    assert params["steps"]["default"] == 30
    assert client.get("/models", params={"enabled": "false"}).json()["models"] == []


def test_cancel_stops_a_running_job_within_a_step_and_keeps_finished_items(client: httpx.Client) -> None:
    # Batch-invariant: items render (and finish) one at a time.
    body = {**JOB, "steps": 100, "count": 3, "batch_invariant": True}
    job_id = client.post("/jobs", json=body).json()["job"]["id"]
    wait_until(lambda: client.get(f"/jobs/{job_id}").json()["summary"]["completed"] >= 1, "no item finished")
    asked = time.monotonic()
    answer = client.post(f"/jobs/{job_id}/cancel")
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] in ("running", "canceled")
    assert "cancel_requested_at" in answer.json()
    done = wait_for_status(client, job_id, {"canceled", "succeeded", "failed"}, timeout=30)
    assert done["status"] == "canceled", done
    assert time.monotonic() - asked < 5, "a cancel must take effect within about a step"
    artifacts = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"]
    assert 1 <= len(artifacts) < 3
    for art in artifacts:
        assert httpx.get(art["url"]).status_code == 200
    # Asking again is harmless, and the stream ends with the canceled status.
    assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "canceled"
    assert read_sse(client, f"/jobs/{job_id}/progress/stream")[-1].data["status"] == "canceled"
    # The worker is free for the next job.
    next_id = client.post("/jobs", json=JOB).json()["job"]["id"]
    assert wait_for_status(client, next_id, {"succeeded", "failed"})["status"] == "succeeded"


def test_a_queued_job_canceled_never_starts(client: httpx.Client) -> None:
    blocker = client.post("/jobs", json={**JOB, "steps": 100, "count": 2}).json()["job"]["id"]
    wait_for_status(client, blocker, {"running"})
    queued = client.post("/jobs", json=JOB).json()["job"]["id"]
    answer = client.post(f"/jobs/{queued}/cancel")
    assert (answer.status_code, answer.json()["status"]) == (202, "canceled")
    client.post(f"/jobs/{blocker}/cancel")
    wait_for_status(client, blocker, {"canceled"})
    # Long enough for a worker to have picked it up, had the cancel not held.
    time.sleep(1)
    assert client.get(f"/jobs/{queued}").json()["status"] == "canceled"
    assert "started on" not in client.get(f"/jobs/{queued}/logs").text
    assert client.get(f"/jobs/{queued}/artifacts").json()["artifacts"] == []


def test_cancel_of_a_finished_or_unknown_job_is_refused(client: httpx.Client) -> None:
    job_id = client.post("/jobs", json=JOB).json()["job"]["id"]
    wait_for_status(client, job_id, {"succeeded"})
    answer = client.post(f"/jobs/{job_id}/cancel")
    assert answer.status_code == 409
    assert (answer.json()["code"], answer.json()["details"]["status"]) == ("job_finished", "succeeded")
    missing = client.post("/jobs/00000000-0000-4000-8000-000000000000/cancel")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
