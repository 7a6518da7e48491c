"""A remote provider, the OpenAI Images API, as an integrator meets it: enabled with DF_PROVIDERS, keyed
with the service's own key, and exercised against a local fake that answers like the real service."""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Stack, distributed_stack, embedded_stack
from fakeopenai import FakeOpenAI
from PIL import Image
from s3_server import MotoS3
from sqlalchemy import create_engine, inspect, text
from support import cli_env, df, wait_for_status, wait_until

ROOT = Path(__file__).resolve().parents[2]
REMOTE: dict[str, Any] = {
    "type": "generate",
    "provider": "openai-images",
    "prompt": "a watercolor fox",
    "width": 1024,
    "height": 1024,
}


def _database_dump(db_url: str) -> bytes:
    """Every row of every table, as text (what a dump of the data holds)."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            tables = inspect(conn).get_table_names()
            rows = [repr(row) for t in tables for row in conn.execute(text(f'SELECT * FROM "{t}"')).all()]
    finally:
        engine.dispose()
    return "\n".join(rows).encode()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as api:
        yield api


def _env(fake: FakeOpenAI, **extra: str) -> dict[str, Any]:
    return {
        "DF_PROVIDERS": "local-sdxl-epicrealism,openai-images",
        "DF_OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": fake.api_key,
        "DF_OPENAI_MODELS": "gpt-image-1,dall-e-2",
        "DF_OPENAI_TIMEOUT_SECONDS": "3",
        **extra,
    }


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, fake: FakeOpenAI
) -> Iterator[Stack]:
    with embedded_stack(tmp_path_factory.mktemp("remote") / "var", tiny_model_dir, **_env(fake)) as s:
        yield s


@pytest.fixture
def client(stack: Stack, fake: FakeOpenAI) -> Iterator[httpx.Client]:
    fake.clear_faults()
    with httpx.Client(base_url=stack.base, timeout=30) as c:
        yield c


def _models(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in client.get("/models").json()["models"]}


def _create(client: httpx.Client, **fields: Any) -> str:
    response = client.post("/jobs", json={**REMOTE, **fields})
    assert response.status_code == 202, response.text
    return str(response.json()["job"]["id"])


def test_models_lists_each_remote_model_with_what_it_honours(client: httpx.Client) -> None:
    models = _models(client)
    gpt = models["openai-images/gpt-image-1"]
    assert gpt["kind"] == "remote-api" and gpt["installed"] is True and gpt["enabled"] is True
    schema = gpt["parameters_schema"]
    assert set(schema["properties"]) == {"prompt", "count", "format", "width", "height"}
    assert schema["x-sizes"] == ["1024x1024", "1536x1024", "1024x1536"]
    assert models["openai-images/dall-e-2"]["parameters_schema"]["x-sizes"][0] == "256x256"
    detail = client.get(f"/models/{gpt['id']}").json()
    assert "sk-" not in json.dumps(detail)


def test_a_remote_job_renders_count_2_into_stored_artifacts_with_metadata(
    stack: Stack, client: httpx.Client, fake: FakeOpenAI
) -> None:
    fake.clear_requests()
    job_id = _create(client, count=2, format="jpg")
    done = wait_for_status(client, job_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    [sent] = fake.generation_requests()
    assert sent.body == {"model": "gpt-image-1", "prompt": REMOTE["prompt"], "n": 2, "size": "1024x1024"}
    assert sent.headers["authorization"] == f"Bearer {fake.api_key}"
    artifacts = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"]
    assert len(artifacts) == 2
    for artifact in artifacts:
        data = httpx.get(artifact["url"]).content
        image = Image.open(io.BytesIO(data))
        assert image.size == (1024, 1024) and image.format == "JPEG"
        assert artifact["content_type"] == "image/jpeg"
    logs = client.get(f"/jobs/{job_id}/logs").text
    assert "job succeeded: 2/2" in logs and fake.api_key not in logs


def test_the_embedded_recipe_names_the_provider_and_model_and_no_model_hash(
    stack: Stack, client: httpx.Client
) -> None:
    job_id = _create(client, width=256, height=256, model_id=_models(client)["openai-images/dall-e-2"]["id"])
    assert wait_for_status(client, job_id, {"succeeded", "failed"})["status"] == "succeeded"
    [artifact] = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"]
    image = Image.open(io.BytesIO(httpx.get(artifact["url"]).content))
    infotext = image.info["parameters"]
    assert "Model: openai-images/dall-e-2" in infotext and "Provider: openai-images" in infotext
    assert "Model hash" not in infotext and "Seed" not in infotext and "Steps" not in infotext
    recipe = json.loads(image.info["dreamforge"])
    assert recipe["provider"] == "openai-images" and recipe["model"]["remote_model"] == "dall-e-2"
    assert "seed" not in recipe and "scheduler" not in recipe


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"seed": 7}, "seed"),
        ({"scheduler": "unipc"}, "scheduler"),
        ({"steps": 20}, "steps"),
        ({"negative_prompt": "blur"}, "negative_prompt"),
        ({"upscale": {"scale": 2}}, "upscale"),
        ({"width": 512, "height": 512}, "width"),
    ],
)
def test_a_field_the_provider_cannot_honour_is_422_naming_it(
    client: httpx.Client, fields: dict[str, Any], field: str
) -> None:
    response = client.post("/jobs", json={**REMOTE, **fields})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "parameter_unsupported" and body["details"]["field"] == field


def test_429_with_retry_after_is_retried_then_succeeds(client: httpx.Client, fake: FakeOpenAI) -> None:
    fake.clear_requests()
    fake.fail_next(429, retry_after="1")
    job_id = _create(client)
    assert wait_for_status(client, job_id, {"succeeded", "failed"})["status"] == "succeeded"
    first, second = fake.generation_requests()
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.95


def test_a_refused_key_fails_the_job_at_once_without_the_key_anywhere(
    stack: Stack, client: httpx.Client, fake: FakeOpenAI
) -> None:
    fake.clear_requests()
    fake.fail_next(401)
    job_id = _create(client)
    done = wait_for_status(client, job_id, {"succeeded", "failed"})
    assert done["status"] == "failed" and done["error"]["code"] == "provider_auth_failed"
    assert "401" in done["error"]["message"]
    assert len(fake.generation_requests()) == 1


def test_5xx_is_retried_and_a_timeout_fails_with_provider_timeout(
    client: httpx.Client, fake: FakeOpenAI
) -> None:
    fake.fail_next(503, times=2)
    ok = _create(client)
    assert wait_for_status(client, ok, {"succeeded", "failed"})["status"] == "succeeded"
    fake.delay_next(6)  # past DF_OPENAI_TIMEOUT_SECONDS (3)
    slow = _create(client)
    done = wait_for_status(client, slow, {"succeeded", "failed"})
    assert done["status"] == "failed" and done["error"]["code"] == "provider_timeout"


def test_cancel_abandons_the_request_in_flight(client: httpx.Client, fake: FakeOpenAI) -> None:
    fake.delay_next(2.5)
    job_id = _create(client)
    wait_until(lambda: client.get(f"/jobs/{job_id}").json()["status"] == "running", "never ran", 30)
    started = time.monotonic()
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
    assert wait_for_status(client, job_id, {"canceled", "succeeded", "failed"})["status"] == "canceled"
    assert time.monotonic() - started < 2.0


def test_a_remote_job_runs_while_a_local_render_is_in_progress(client: httpx.Client) -> None:
    local = client.post(
        "/jobs",
        json={"type": "generate", "prompt": "slow", "width": 64, "height": 64, "steps": 200, "count": 4},
    ).json()["job"]["id"]
    wait_for_status(client, local, {"running"})
    remote = _create(client)
    assert wait_for_status(client, remote, {"succeeded", "failed"})["status"] == "succeeded"
    assert client.get(f"/jobs/{local}").json()["status"] == "running"
    client.post(f"/jobs/{local}/cancel")


def test_the_cli_creates_a_remote_job_and_lists_the_remote_models(stack: Stack, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "client", DF_API_BASE=stack.base)
    run = df(
        env,
        "job",
        "create",
        "--provider",
        "openai-images",
        "--prompt",
        "a kite",
        "--width",
        "1024",
        "--height",
        "1024",
        "--count",
        "2",
        "--wait",
        "-q",
    )
    assert run.code == 0, run.stderr
    assert run.json["job"]["status"] == "succeeded" and len(run.json["artifacts"]) == 2
    refused = df(
        env,
        "job",
        "create",
        "--provider",
        "openai-images",
        "--prompt",
        "x",
        "--width",
        "1024",
        "--height",
        "1024",
        "--seed",
        "5",
    )
    assert refused.code != 0 and "parameter_unsupported" in refused.stderr


def test_the_key_is_in_no_stored_byte(stack: Stack, fake: FakeOpenAI) -> None:
    """Run last in this module: every job above has stored its rows, events, logs and images."""
    key = fake.api_key.encode()
    data_dir = Path(stack.env["DF_DATA_DIR"])
    stored = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.suffix in (".png", ".jpg") for p in stored)
    for path in stored:
        assert key not in path.read_bytes(), path
    assert fake.api_key not in stack.api.log_text()


def test_distributed_a_cpu_worker_without_torch_runs_remote_jobs(
    tmp_path: Path, tiny_model_dir: Path, fake: FakeOpenAI, moto_s3: MotoS3
) -> None:
    """No GPU worker at all: the remote queue's own worker, unable to import torch, renders the job."""
    fake.clear_faults()
    with distributed_stack(tmp_path / "var", tiny_model_dir, moto_s3, workers=0, **_env(fake)) as s:
        s.add_remote_worker(command=[sys.executable, str(ROOT / "tests" / "no_torch.py")])
        with httpx.Client(base_url=s.base, timeout=30) as c:
            job_id = _create(c, count=2)
            done = wait_for_status(c, job_id, {"succeeded", "failed"}, timeout=60)
            assert done["status"] == "succeeded", (done, s.workers[0].log_text()[-3000:])
            assert len(c.get(f"/jobs/{job_id}/artifacts").json()["artifacts"]) == 2
            # A local job waits for a GPU worker: none serves the remote queue's jobs' queue.
            local = c.post(
                "/jobs", json={"type": "generate", "prompt": "x", "width": 64, "height": 64}
            ).json()
            time.sleep(1)
            assert c.get(f"/jobs/{local['job']['id']}").json()["status"] == "queued"
        dump = _database_dump(s.db_url)
        assert b"openai-images/gpt-image-1" in dump and fake.api_key.encode() not in dump
        keyed = [
            k
            for k in moto_s3.keys(s.bucket, "")
            if fake.api_key.encode() in moto_s3.client().get_object(Bucket=s.bucket, Key=k)["Body"].read()
        ]
        assert keyed == []
