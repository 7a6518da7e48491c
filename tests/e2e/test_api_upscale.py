"""Generate → upscale in one job, over HTTP and the CLI, in both topologies.

The service runs the tiny SDXL model; a tiny random-weight ESRGAN (2x) is installed beside it as
an `upscaler` model, as `dreamforge model download` or `create-tiny --kind upscaler` would.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Stack, register_upscaler_file
from PIL import Image
from support import df, read_sse

from dreamforge.recipe.embed import read_metadata
from dreamforge.recipe.infotext import parse_infotext
from dreamforge.registry.hashing import autov2, sha256_file

JOB: dict[str, Any] = {
    "type": "generate",
    "prompt": "a lighthouse on a cliff at dusk",
    "width": 64,
    "height": 64,
    "steps": 3,
}


@pytest.fixture(scope="module")
def upscaler(server: Stack, tiny_upscalers: dict[int, Path]) -> dict[str, str]:
    """The tiny 2x upscaler, installed in the running service's registry."""
    path = tiny_upscalers[2]
    model_id = register_upscaler_file(server.registry_url, path, "tiny-esrgan-x2")
    return {"id": model_id, "name": "tiny-esrgan-x2", "autov2": autov2(sha256_file(path))}


def test_models_list_the_upscaler_with_its_scale(client: httpx.Client, upscaler: dict[str, str]) -> None:
    models = {m["id"]: m for m in client.get("/models").json()["models"]}
    listed = models[upscaler["id"]]
    assert (listed["kind"], listed["scale"]) == ("upscaler", 2)
    assert set(listed["parameters_schema"]["properties"]) >= {"scale", "method", "denoise", "steps"}
    detail = client.get(f"/models/{upscaler['id']}").json()
    assert "upscale" in detail["capabilities"]


def test_count_2_with_model_upscale_delivers_images_at_twice_the_size(
    client: httpx.Client, upscaler: dict[str, str]
) -> None:
    created = client.post("/jobs", json={**JOB, "count": 2, "upscale": {"scale": 2, "method": "model"}})
    assert created.status_code == 202, created.text
    job_id = created.json()["job"]["id"]
    events = read_sse(client, f"/jobs/{job_id}/progress/stream")
    assert events[-1].event == "done" and events[-1].data["status"] == "succeeded"

    progress = [e.data for e in events if e.event == "progress"]
    for index in (0, 1):
        stages = [p["stage"] for p in progress if p["item_index"] == index]
        # Each item is generated, then upscaled, then stored: the stages come in that order.
        assert list(dict.fromkeys(stages)) == ["denoise", "upscale", "encode_and_store"]
    assert progress[-1]["overall"] == 1.0
    logs = [e.data["message"] for e in events if e.event == "log"]
    assert any(m.startswith("item 0: upscale 2x with 'tiny-esrgan-x2'") for m in logs)
    assert any(m.startswith("item 1: upscale done in") for m in logs)

    job = client.get(f"/jobs/{job_id}").json()
    assert job["steps"] == [
        {"name": "generate", "status": "succeeded"},
        {"name": "upscale", "status": "succeeded"},
    ]
    prog = client.get(f"/jobs/{job_id}/progress").json()
    assert prog["progress"] == 1.0
    assert [s["name"] for s in prog["stages"]] == ["denoise", "upscale", "encode_and_store"]

    artifacts = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"]
    assert [(a["item_index"], a["stage"], a["width"], a["height"]) for a in artifacts] == [
        (0, "final", 128, 128),
        (1, "final", 128, 128),
    ]
    data = httpx.get(artifacts[1]["url"]).content
    assert Image.open(io.BytesIO(data)).size == (128, 128)
    meta = read_metadata(data)
    assert meta.infotext is not None and meta.recipe is not None
    _, _, params = parse_infotext(meta.infotext)
    assert (params["Size"], params["Hires upscale"], params["Hires upscaler"]) == (
        "64x64",
        "2",
        upscaler["name"],
    )
    assert json.loads(params["Hashes"])["upscaler"] == upscaler["autov2"]
    assert meta.recipe["upscale"]["upscaler"]["id"] == upscaler["id"]


def test_refine_runs_extra_denoising_steps_and_repeats_byte_for_byte(
    client: httpx.Client, upscaler: dict[str, str]
) -> None:
    body = {
        **JOB,
        "seed": 2024,
        "embed_metadata": False,  # the embedded recipe names the job; the pixels alone must repeat
        "upscale": {"scale": 2, "method": "refine", "denoise": 0.5, "steps": 6},
    }
    digests = []
    for _ in range(2):
        job_id = client.post("/jobs", json=body).json()["job"]["id"]
        events = read_sse(client, f"/jobs/{job_id}/progress/stream")
        assert events[-1].data["status"] == "succeeded"
        refine = [
            (e.data["step"], e.data["steps"])
            for e in events
            if e.event == "progress" and e.data["stage"] == "refine"
        ]
        # int(6 * 0.5) img2img steps; progress is throttled, so middle steps may go unreported.
        assert refine[0] == (1, 3) and refine[-1] == (3, 3)
        artifact = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"][0]
        assert (artifact["width"], artifact["height"]) == (128, 128)
        digests.append(artifact["sha256"])
    assert digests[0] == digests[1]


def test_keep_base_lists_the_base_image_beside_the_final_one(
    client: httpx.Client, upscaler: dict[str, str]
) -> None:
    body = {**JOB, "upscale": {"scale": 2, "keep_base": True, "upscaler_model_id": upscaler["id"]}}
    job_id = client.post("/jobs", json=body).json()["job"]["id"]
    events = read_sse(client, f"/jobs/{job_id}/progress/stream")
    streamed = [e.data["artifact"]["stage"] for e in events if e.event == "artifact"]
    assert streamed == ["base", "final"]
    artifacts = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"]
    assert [(a["stage"], a["width"]) for a in artifacts] == [("base", 64), ("final", 128)]
    assert artifacts[0]["s3_key"].endswith("/0-base.png")
    assert client.get(f"/jobs/{job_id}").json()["summary"] == {"count": 1, "completed": 1}


@pytest.mark.parametrize(
    ("upscale", "size", "needle"),
    [
        ({"scale": 3}, 64, "scale"),
        ({"scale": 4}, 2048, "4096"),
        ({"scale": 2, "denoise": 0.3}, 64, "refine"),
        ({"scale": 2, "method": "refine", "denoise": 0.01, "steps": 10}, 64, "no denoising step"),
        ({"scale": 2, "method": "magic"}, 64, "method"),
    ],
)
def test_impossible_upscale_requests_get_a_clear_422(
    client: httpx.Client, upscale: dict[str, Any], size: int, needle: str
) -> None:
    answer = client.post("/jobs", json={**JOB, "width": size, "height": size, "upscale": upscale})
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["code"] == "validation_error"
    assert needle in json.dumps(body["details"]) + body["message"]


def test_an_upscaler_that_is_a_checkpoint_is_refused(client: httpx.Client, upscaler: dict[str, str]) -> None:
    checkpoint = next(m for m in client.get("/models").json()["models"] if m["kind"] == "sdxl-checkpoint")
    answer = client.post(
        "/jobs", json={**JOB, "upscale": {"scale": 2, "upscaler_model_id": checkpoint["id"]}}
    )
    assert answer.status_code == 422
    body = answer.json()
    assert body["code"] == "model_unavailable"
    assert body["details"]["field"] == "upscale.upscaler_model_id"
    assert body["details"]["reason"] == "wrong_kind"
    # And an upscaler is no checkpoint to generate with.
    answer = client.post("/jobs", json={**JOB, "model_id": upscaler["id"]})
    assert (answer.status_code, answer.json()["details"]["reason"]) == (422, "wrong_kind")


def test_cli_creates_waits_and_downloads_an_upscaled_job(
    env: dict[str, str], upscaler: dict[str, str], tmp_path: Path
) -> None:
    run = df(env, "job", "create", "--prompt", "a red kite", "--width", "64", "--height", "64",
             "--steps", "2", "--upscale", "2", "--keep-base", "--wait", "--quiet")  # fmt: skip
    assert run.code == 0, run.stderr
    result = json.loads(run.stdout)
    assert [s["status"] for s in result["job"]["steps"]] == ["succeeded", "succeeded"]
    job_id = result["job"]["id"]
    run = df(env, "job", "artifacts", job_id, "--download", str(tmp_path), "--quiet")
    assert run.code == 0, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0-base.png", "0.png"]
    assert Image.open(tmp_path / "0.png").size == (128, 128)
    usage = df(env, "job", "create", "--prompt", "x", "--width", "64", "--height", "64", "--denoise", "0.3")
    assert usage.code == 2 and "--upscale" in usage.stderr
