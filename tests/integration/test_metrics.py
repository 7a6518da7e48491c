"""Observability of real processes: `/metrics` of the API (embedded: with its in-process worker's job
metrics), the `/metrics` listener of a Celery worker, and JSON log lines carrying request and job ids."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Stack, distributed_stack, embedded_stack
from prometheus_client.parser import text_string_to_metric_families
from s3_server import MotoS3
from support import free_port, wait_for_status

JOB: dict[str, Any] = {"type": "generate", "prompt": "a red cube", "width": 64, "height": 64, "steps": 2}
REQUEST_ID = "metrics-test-request-1"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of a `/metrics` page by name and sorted labels, parsed as Prometheus does."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a series not (yet) exported."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def run_job(base: str, count: int, headers: dict[str, str] | None = None) -> str:
    with httpx.Client(base_url=base, timeout=30, headers=headers) as client:
        created = client.post("/jobs", json={**JOB, "count": count})
        assert created.status_code == 202, created.text
        job_id: str = created.json()["job"]["id"]
        wait_for_status(client, job_id, {"succeeded", "failed", "canceled"})
        assert client.get(f"/jobs/{job_id}").json()["status"] == "succeeded"
    return job_id


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Stack]:
    """One embedded server for the module, logging JSON lines."""
    data_dir = tmp_path_factory.mktemp("metrics") / "var"
    with embedded_stack(data_dir, tiny_model_dir, DF_LOG_FORMAT="json") as stack:
        yield stack


def test_embedded_metrics_count_jobs_images_and_requests(embedded: Stack) -> None:
    url = f"{embedded.api.root}/metrics"
    before = scrape(url)

    job_id = run_job(embedded.base, count=2)
    after = scrape(url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("dreamforge_jobs_total", status="succeeded", code="none") == 1
    assert moved("dreamforge_job_duration_seconds_count", status="succeeded") == 1
    assert moved("dreamforge_images_total") == 2
    # The tiny model renders both items in one engine call; each is encoded and stored.
    assert moved("dreamforge_stage_duration_seconds_count", stage="denoise") >= 1
    assert moved("dreamforge_stage_duration_seconds_count", stage="encode") == 2
    assert moved("dreamforge_stage_duration_seconds_count", stage="upload") == 2
    # This process loaded the model for its first job (this one or an earlier one of the module).
    assert value(after, "dreamforge_model_load_seconds_count") >= 1
    # The status polls: by route template, never by the raw path (which holds the job's id).
    assert moved("dreamforge_http_responses_total", method="GET", route="/v1/jobs/{id}", status="200") >= 1
    assert moved("dreamforge_http_responses_total", method="POST", route="/v1/jobs", status="202") == 1
    assert value(after, "dreamforge_http_request_duration_seconds_count", method="GET", route="/v1/jobs/{id}")
    assert not [key for key in after if any(job_id in label for _, label in key[1])]
    # Read from the database at scrape time: present, and nothing left in the queue.
    assert (("dreamforge_queue_depth", (("status", "queued"),)) in after) and (
        ("dreamforge_queue_depth", (("status", "running"),)) in after
    )
    assert value(after, "dreamforge_queue_depth", status="queued") == 0
    assert value(after, "dreamforge_queue_depth", status="running") == 0
    # The API process never imported torch, so it reports no GPU memory (CPU tiny model: no CUDA).
    openapi = httpx.get(f"{embedded.base.removesuffix('/v1')}/openapi.json", timeout=10).json()
    assert "/metrics" not in openapi["paths"]


def test_json_logs_carry_request_and_job_ids(embedded: Stack) -> None:
    job_id = run_job(embedded.base, count=2, headers={"X-Request-Id": REQUEST_ID})

    lines = [line for line in embedded.api.log_text().splitlines() if line.strip()]
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    for entry in entries:
        assert {"ts", "level", "logger", "message"} <= set(entry), entry

    job_lines = [e for e in entries if job_id in e["message"] and e["logger"] != "uvicorn.access"]
    assert job_lines and all(e.get("job_id") == job_id for e in job_lines)
    assert any(e["message"].endswith("item(s)") and "succeeded" in e["message"] for e in job_lines)
    item_lines = [e for e in job_lines if "item 1:" in e["message"]]
    assert item_lines and all(e.get("item_index") == 1 for e in item_lines)
    # uvicorn's access lines go through the same formatter, inside the request's context.
    access = [e for e in entries if e["logger"] == "uvicorn.access" and e.get("request_id") == REQUEST_ID]
    assert any(e["method"] == "POST" and e["path"] == "/v1/jobs" and e["status"] == 202 for e in access)
    assert any(e["method"] == "GET" and e["path"] == f"/v1/jobs/{job_id}" for e in access)
    assert not [e for e in entries if e["logger"] == "uvicorn.access" and "request_id" not in e]


@pytest.mark.services
def test_a_worker_serves_its_own_metrics(tmp_path: Path, tiny_model_dir: Path, moto_s3: MotoS3) -> None:
    port = free_port()
    with distributed_stack(tmp_path / "var", tiny_model_dir, moto_s3, workers=0) as stack:
        worker = stack.add_worker(DF_METRICS_PORT=str(port), DF_LOG_FORMAT="json")
        job_id = run_job(stack.base, count=3)

        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        api = scrape(f"{stack.api.root}/metrics")

    assert value(samples, "dreamforge_jobs_total", status="succeeded", code="none") == 1
    assert value(samples, "dreamforge_images_total") == 3
    assert value(samples, "dreamforge_stage_duration_seconds_count", stage="upload") == 3
    assert value(samples, "dreamforge_model_load_seconds_count") == 1
    # Each process reports what it did: the API ran no job; it serves the shared queue depth instead.
    assert value(api, "dreamforge_jobs_total", status="succeeded", code="none") == 0
    assert ("dreamforge_queue_depth", (("status", "queued"),)) in api
    assert ("dreamforge_queue_depth", (("status", "queued"),)) not in samples

    # The worker's own lines are JSON too (Celery's included), and its job lines carry the job id.
    entries = [json.loads(line) for line in worker.log_text().splitlines() if line.strip()]
    assert any(e["message"].endswith(" ready.") for e in entries)
    job_lines = [e for e in entries if job_id in e["message"]]
    assert job_lines and all(e.get("job_id") == job_id for e in job_lines)
