"""`dreamforge model ...` as a user runs it, then a job rendered through the API with what it installed.

The CLI runs as a subprocess against local servers that answer like Civitai and the Hugging Face
Hub; the API is a real `dreamforge serve` on the same data directory.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import download_env
from fakehubs import FakeCivitai, FakeHub
from support import ServerProcess, cli_env, run_cli, wait_for_status

from dreamforge.recipe.embed import read_metadata
from dreamforge.recipe.infotext import parse_infotext

VERSION_ID = 4201
SINGLE_REPO = "acme/tiny-sdxl-single"
JOB = {"type": "generate", "prompt": "a lighthouse at dawn", "width": 64, "height": 64, "steps": 2}


@dataclass
class Session:
    data_dir: Path
    env: dict[str, str]
    hub: FakeHub
    civitai: FakeCivitai

    def cli(self, *args: str) -> tuple[int, Any, str]:
        """Run the CLI; returns (exit code, parsed stdout JSON or raw text, stderr)."""
        done = run_cli(list(args), self.env)
        try:
            out: Any = json.loads(done.stdout) if done.stdout.strip() else None
        except ValueError:
            out = done.stdout
        return done.returncode, out, done.stderr


@pytest.fixture
def session(
    tmp_path: Path, fake_hub: FakeHub, fake_civitai: FakeCivitai, tiny_single_file: tuple[Path, Path]
) -> Session:
    checkpoint = tiny_single_file[0].read_bytes()
    fake_civitai.add_version(
        VERSION_ID,
        77,
        checkpoint,
        filename="epicrealismXL_tiny.safetensors",
        model_name="epiCRealism XL",
        version_name="v1 tiny",
    )
    fake_hub.add_repo(SINGLE_REPO, {"tiny.safetensors": checkpoint, "tiny.ckpt": b"pickle"})
    data_dir = tmp_path / "var"
    return Session(data_dir, download_env(data_dir, fake_hub, fake_civitai), fake_hub, fake_civitai)


def test_download_list_verify_then_render_with_the_downloaded_model(session: Session) -> None:
    code, out, err = session.cli("model", "download", f"civitai:{VERSION_ID}", "--enable")
    assert code == 0, err
    civitai_model = out["model"]
    assert out["status"] == "installed"
    assert civitai_model["enabled"] and civitai_model["installed"]
    assert civitai_model["source"] == f"civitai:{VERSION_ID}"
    assert civitai_model["autov2"] == civitai_model["sha256"][:10]
    assert next(f["path"] for f in civitai_model["files"]) == "epicrealismXL_tiny.safetensors"
    # Not a terminal: plain progress lines on stderr, the JSON result alone on stdout.
    assert "downloading epicrealismXL_tiny.safetensors" in err
    assert f"installed: epiCRealism-XL-v1-tiny ({civitai_model['id']}), enabled" in err

    code, out, err = session.cli("model", "download", f"hf:{SINGLE_REPO}#tiny.safetensors", "-q")
    assert code == 0 and err == ""
    hub_model = out["model"]
    assert not hub_model["enabled"]

    code, listing, _ = session.cli("model", "list")
    assert {m["id"] for m in listing["models"]} == {civitai_model["id"], hub_model["id"]}
    code, listing, _ = session.cli("model", "list", "--enabled")
    assert [m["id"] for m in listing["models"]] == [civitai_model["id"]]
    code, table, _ = session.cli("model", "list", "--output", "table")
    assert code == 0 and "epiCRealism-XL-v1-tiny" in table and civitai_model["id"][:8] in table
    assert max(len(line) for line in table.splitlines()) <= 80

    code, got, _ = session.cli("model", "get", civitai_model["id"])
    assert code == 0 and got["revision"] == str(VERSION_ID) and got["version"] == "v1 tiny"

    code, report, err = session.cli("model", "verify", f"civitai:{VERSION_ID}")
    assert code == 0 and report["ok"], err

    server = ServerProcess(data_dir=session.data_dir, env=cli_env(session.data_dir)).start()
    try:
        with httpx.Client(base_url=server.base, timeout=30) as client:
            models = client.get("/models").json()["models"]
            assert [m["id"] for m in models] == [civitai_model["id"]]  # enabled only

            created = client.post("/jobs", json={**JOB, "model_id": civitai_model["id"]})
            assert created.status_code == 202, created.text
            job = created.json()["job"]
            done = wait_for_status(client, job["id"], {"succeeded", "failed"})
            assert done["status"] == "succeeded", done
            assert done["model_id"] == civitai_model["id"]
            artifact = client.get(f"/jobs/{job['id']}/artifacts").json()["artifacts"][0]
            image = client.get(artifact["url"]).content

            disabled = client.post("/jobs", json={**JOB, "model_id": hub_model["id"]})
            unknown = client.post("/jobs", json={**JOB, "model_id": str(uuid.uuid4())})
    finally:
        server.stop()

    infotext = read_metadata(image).infotext
    assert infotext is not None
    _, _, params = parse_infotext(infotext)
    assert params["Model hash"] == civitai_model["autov2"]
    assert params["Model"] == "epiCRealism-XL-v1-tiny"
    assert json.loads(params["Hashes"]) == {"model": civitai_model["autov2"]}
    assert json.loads(params["Civitai resources"]) == [{"type": "checkpoint", "modelVersionId": VERSION_ID}]
    assert re.search(r", Civitai resources:\s*(\[\{.*?\}\])", infotext)  # as Civitai's parser reads it

    for response, reason in ((disabled, "disabled"), (unknown, "unknown")):
        assert response.status_code == 422
        body = response.json()
        assert body["code"] == "model_unavailable"
        assert body["details"]["field"] == "model_id" and body["details"]["reason"] == reason
        assert body["correlation_id"]


def test_verify_names_the_changed_file_and_exits_1(session: Session) -> None:
    code, out, err = session.cli("model", "download", f"hf:{SINGLE_REPO}#tiny.safetensors", "-q")
    assert code == 0, err
    root = Path(out["model"]["path"]).parent
    vocab = root / "config/tokenizer/vocab.json"
    vocab.write_bytes(vocab.read_bytes().replace(b'"', b"'", 1))

    code, report, err = session.cli("model", "verify", out["model"]["id"])

    assert code == 1
    assert not report["ok"]
    assert [f["path"] for f in report["files"] if f["status"] != "ok"] == ["config/tokenizer/vocab.json"]
    assert "modified: config/tokenizer/vocab.json" in err


def test_bad_input_gets_one_clear_line_and_the_right_exit_code(session: Session) -> None:
    code, _, err = session.cli("model", "download", "civitai:epicrealism-xl")
    assert code == 2 and "numeric model version id" in err and "Traceback" not in err

    code, _, err = session.cli("model", "download", "ftp:x/y")
    assert code == 2 and "unknown source 'ftp'" in err

    code, _, err = session.cli("model", "download", f"civitai:{VERSION_ID}", "--name", "../escape")
    assert code == 2 and "not a valid model name" in err
    assert session.civitai.hits() == []

    code, _, err = session.cli("model", "download", f"hf:{SINGLE_REPO}#tiny.ckpt")
    assert code == 1 and "pickle checkpoints" in err and "Traceback" not in err

    code, _, err = session.cli("model", "download", "civitai:999999")
    assert code == 1 and "no model version" in err

    code, _, err = session.cli("model", "get", "no-such-model")
    assert code == 1 and "no installed model matches" in err


def test_a_job_with_no_model_installed_says_how_to_install_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "empty"
    server = ServerProcess(data_dir=data_dir, env=cli_env(data_dir)).start()
    try:
        response = httpx.post(f"{server.base}/jobs", json=JOB, timeout=30)
    finally:
        server.stop()
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "no_model_installed"
    assert "dreamforge model download" in body["message"] and "civitai:" in body["message"]


def test_download_kind_refuses_a_file_of_the_other_kind(session: Session) -> None:
    ref = f"hf:{SINGLE_REPO}#tiny.safetensors"

    code, out, err = session.cli("model", "download", ref, "--kind", "upscaler")
    message = " ".join(err.split())
    assert code == 1 and out is None and "Traceback" not in err
    assert "tiny.safetensors is an SDXL checkpoint, not an upscaler; drop --kind upscaler" in message
    assert not (session.data_dir / "models" / "tiny-sdxl-single-tiny").exists()
    assert session.hub.hits(path_contains="stable-diffusion-xl-base") == []

    code, _, err = session.cli("model", "download", ref, "--kind", "lora")
    assert code == 2 and "'lora' is not one of" in " ".join(err.split())
