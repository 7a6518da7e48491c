"""Upscalers installed by the model downloader, from local servers that answer like the Hub and Civitai.

A single `.safetensors` file is a checkpoint or an upscaler: these tests check that each lands as its
kind (an upscaler without the SDXL config files), that pickles and files that are neither are refused
with nothing left registered, and that a downloaded upscaler serves a job through the real runner.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import SDXL_CONFIG_REPO, register_tiny
from fake_engine import FakeEngine
from fakehubs import FakeCivitai, FakeHub
from huggingface_hub import constants as hf_constants
from PIL import Image
from safetensors.numpy import save as save_safetensors
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

from dreamforge.api.schemas import DEFAULT_PROVIDER, JobCreateRequest, JobStatus
from dreamforge.cli.main import app
from dreamforge.cli.models import DownloadKind
from dreamforge.config import Settings
from dreamforge.db.migrate import upgrade_to_head
from dreamforge.db.session import create_db_engine, make_session_factory, transaction
from dreamforge.db.tables import Model
from dreamforge.error_codes import ErrorCode
from dreamforge.jobs import repository as jobs_repo
from dreamforge.jobs.service import create_job
from dreamforge.recipe.embed import read_metadata
from dreamforge.recipe.infotext import parse_infotext
from dreamforge.registry.download import KINDS, DownloadResult, ModelDownloader
from dreamforge.registry.formats import UnsafeFile
from dreamforge.registry.install import NotACheckpoint, NotAnUpscaler
from dreamforge.registry.refs import parse_ref
from dreamforge.registry.transfer import DownloadError, SilentProgress
from dreamforge.registry.verify import verify_model
from dreamforge.runtime import build_store, make_upscaler
from dreamforge.worker.context import WorkerContext
from dreamforge.worker.runner import run_job

UPSCALER_REPO = "acme/tiny-esrgan"
UPSCALER_FILE = "2x_TinyESRGAN.safetensors"
UPSCALER_REF = f"hf:{UPSCALER_REPO}#{UPSCALER_FILE}"


@dataclass
class Registry:
    """A fresh registry (SQLite + models dir) wired to the fake sources."""

    settings: Settings
    sessions: sessionmaker[Session]
    hub: FakeHub
    civitai: FakeCivitai

    def download(self, ref: str, **kwargs: Any) -> DownloadResult:
        with httpx.Client(timeout=10) as client:
            downloader = ModelDownloader(
                self.settings, self.sessions, client, SilentProgress(), backoff_initial=0.01
            )
            return downloader.download(parse_ref(ref), **kwargs)

    def model(self, model_id: uuid.UUID) -> Model:
        with self.sessions() as s:
            row = s.get(Model, model_id)
            assert row is not None
            s.expunge(row)
            return row

    def count(self) -> int:
        with self.sessions() as s:
            return s.query(Model).count()

    def installed_folders(self) -> list[str]:
        """Model folders in the models dir (staging under `.downloads` is not one)."""
        return sorted(p.name for p in self.settings.models_dir.iterdir() if not p.name.startswith("."))

    def config_repo_hits(self) -> list[str]:
        return [h.path for h in self.hub.hits() if SDXL_CONFIG_REPO in h.path]

    def cli(self, monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
        """`dreamforge ARGS` in this process, on this registry (torch stays imported between runs)."""
        monkeypatch.setenv("DF_DATA_DIR", str(self.settings.data_dir))
        monkeypatch.setenv("DF_CIVITAI_ENDPOINT", self.civitai.url)
        return CliRunner().invoke(app, list(args), terminal_width=80)


@pytest.fixture
def registry(
    tmp_path: Path, fake_hub: FakeHub, fake_civitai: FakeCivitai, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Registry]:
    # The test session runs offline (conftest); downloads may reach the fake Hub only.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    settings = Settings(
        data_dir=tmp_path / "var",
        civitai_endpoint=fake_civitai.url,
        signing_secret="test-secret",
        download_attempts=2,
        _env_file=None,
    )
    settings.ensure_dirs()
    upgrade_to_head(settings.database_url)
    engine = create_db_engine(settings.database_url)
    try:
        yield Registry(settings, make_session_factory(engine), fake_hub, fake_civitai)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def upscaler_bytes(tmp_path_factory: pytest.TempPathFactory) -> dict[int, bytes]:
    """Tiny random-weight ESRGAN upscalers by native scale, as a publisher would upload them."""
    from dreamforge.registry.tiny import build_tiny_upscaler

    root = tmp_path_factory.mktemp("upscalers")
    return {s: build_tiny_upscaler(root / f"x{s}.safetensors", scale=s).read_bytes() for s in (2, 4)}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_hub_upscaler_installs_as_one_file_without_sdxl_configs(
    registry: Registry, upscaler_bytes: dict[int, bytes]
) -> None:
    data = upscaler_bytes[2]
    registry.hub.add_repo(UPSCALER_REPO, {UPSCALER_FILE: data, "2x_TinyESRGAN.pth": b"pickle"})

    result = registry.download(UPSCALER_REF, enable=True)

    model = registry.model(result.model.id)
    assert (model.kind, model.layout, model.source) == ("upscaler", "single_file", UPSCALER_REF)
    assert model.extra["scale"] == 2 and model.extra["architecture"] == "ESRGAN"
    assert model.extra["hf_file"] == UPSCALER_FILE and "config_repo" not in model.extra
    assert "upscale-x2" in model.capabilities
    assert model.config_path is None and model.sha256 == _sha(data)
    assert [(f["path"], f["size"]) for f in model.files] == [(UPSCALER_FILE, len(data))]
    assert sorted(p.name for p in Path(model.path).parent.iterdir()) == [UPSCALER_FILE]
    assert result.fetched_bytes == len(data)
    assert registry.config_repo_hits() == []
    assert verify_model(model).ok

    weights = Path(model.path)
    flipped = bytearray(weights.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    weights.write_bytes(bytes(flipped))
    report = verify_model(model)
    assert [(f.path, f.status) for f in report.files] == [(UPSCALER_FILE, "modified")]


def test_a_civitai_upscaler_installs_as_its_type_says_and_other_types_are_named_and_refused(
    registry: Registry, upscaler_bytes: dict[int, bytes]
) -> None:
    registry.civitai.add_version(
        31,
        3,
        upscaler_bytes[4],
        filename="4x_TinyUltraSharp.safetensors",
        model_name="4x TinyUltraSharp",
        version_name="v1",
        base_model="Other",
        model_type="Upscaler",
    )
    registry.civitai.add_version(32, 4, upscaler_bytes[4], model_type="LORA")

    model = registry.model(registry.download("civitai:31").model.id)

    assert (model.kind, model.name, model.extra["scale"]) == ("upscaler", "4x-TinyUltraSharp-v1", 4)
    assert model.extra["civitai_version_id"] == 31 and model.config_path is None
    assert registry.config_repo_hits() == []
    with pytest.raises(DownloadError, match=r"civitai:32 is a LORA model.*Checkpoint, Upscaler"):
        registry.download("civitai:32")
    assert registry.civitai.hits(server="api", path_contains="/api/download/models/32") == []
    assert registry.count() == 1


def test_pickle_upscalers_are_refused_before_any_byte_is_fetched(registry: Registry) -> None:
    registry.hub.add_repo(UPSCALER_REPO, {"4x_Tiny.pth": b"pickle"})
    registry.civitai.add_version(
        33, 5, b"pickle", filename="4x_Tiny.pth", fmt="PickleTensor", model_type="Upscaler"
    )

    for ref in (f"hf:{UPSCALER_REPO}#4x_Tiny.pth", "civitai:33"):
        with pytest.raises(UnsafeFile, match=r"pickle files .* can run arbitrary code") as caught:
            registry.download(ref)
        assert "pick a .safetensors" in caught.value.message
    assert not [h for h in registry.hub.hits() if h.path.endswith(".pth")]
    assert registry.civitai.hits(server="cdn") == []
    assert registry.count() == 0


def test_a_file_that_is_neither_checkpoint_nor_upscaler_leaves_nothing_installed(
    registry: Registry,
) -> None:
    junk = save_safetensors({"foo": np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)})
    registry.hub.add_repo(UPSCALER_REPO, {"foo.safetensors": junk})

    with pytest.raises(NotAnUpscaler, match="neither an SDXL checkpoint nor an upscaler") as caught:
        registry.download(f"hf:{UPSCALER_REPO}#foo.safetensors", name="junk")

    assert caught.value.code is ErrorCode.not_an_upscaler
    assert "spandrel recognises no upscaler" in caught.value.message
    assert registry.count() == 0
    assert registry.installed_folders() == []
    assert registry.config_repo_hits() == []


def test_kind_forces_what_the_file_must_be(
    registry: Registry, upscaler_bytes: dict[int, bytes], tiny_single_file: tuple[Path, Path]
) -> None:
    registry.hub.add_repo(
        UPSCALER_REPO,
        {UPSCALER_FILE: upscaler_bytes[2], "sdxl.safetensors": tiny_single_file[0].read_bytes()},
    )
    registry.civitai.add_version(34, 6, upscaler_bytes[2], model_type="Upscaler")

    with pytest.raises(NotACheckpoint, match=r"not an SDXL checkpoint.*--kind upscaler") as caught:
        registry.download(UPSCALER_REF, kind="sdxl-checkpoint")
    assert caught.value.code is ErrorCode.not_a_checkpoint
    with pytest.raises(NotAnUpscaler, match="is an SDXL checkpoint, not an upscaler; drop --kind upscaler"):
        registry.download(f"hf:{UPSCALER_REPO}#sdxl.safetensors", kind="upscaler")
    with pytest.raises(NotACheckpoint, match="is an Upscaler on Civitai"):
        registry.download("civitai:34", kind="sdxl-checkpoint")
    with pytest.raises(NotAnUpscaler, match="diffusers SDXL pipeline"):
        registry.download(f"hf:{UPSCALER_REPO}", kind="upscaler")
    assert registry.count() == 0 and registry.installed_folders() == []
    assert registry.config_repo_hits() == []
    assert registry.civitai.hits(server="cdn") == []

    # The refused file stayed staged, so installing it as what it is fetches nothing again.
    again = registry.download(UPSCALER_REF, kind="upscaler")
    assert again.fetched_bytes == 0 and registry.model(again.model.id).kind == "upscaler"


def test_a_downloaded_upscaler_serves_a_job(
    registry: Registry, upscaler_bytes: dict[int, bytes], tiny_model_dir: Path
) -> None:
    registry.hub.add_repo(UPSCALER_REPO, {UPSCALER_FILE: upscaler_bytes[2]})
    upscaler = registry.download(UPSCALER_REF, enable=True).model
    settings = registry.settings
    register_tiny(settings.database_url, tiny_model_dir)
    ctx = WorkerContext(
        settings=settings,
        sessions=registry.sessions,
        store=build_store(settings),
        engines={DEFAULT_PROVIDER: FakeEngine},
        upscalers=make_upscaler(settings),
    )
    request = JobCreateRequest.model_validate(
        {
            "type": "generate",
            "prompt": "a lighthouse at dawn",
            "width": 64,
            "height": 64,
            "steps": 2,
            "count": 1,
            "upscale": {"scale": 2},
        }
    )
    with transaction(registry.sessions) as s:
        job, _ = create_job(s, request, None, providers=[DEFAULT_PROVIDER])
        job_id = job.id

    assert run_job(ctx, job_id) is JobStatus.succeeded

    with registry.sessions() as s:
        [artifact] = jobs_repo.list_artifacts(s, job_id)
    image = ctx.store.get(artifact.s3_key)
    assert Image.open(io.BytesIO(image)).size == (128, 128)
    infotext = read_metadata(image).infotext
    assert infotext is not None
    _, _, params = parse_infotext(infotext)
    assert params["Hires upscaler"] == upscaler.name
    assert json.loads(params["Hashes"])["upscaler"] == upscaler.sha256[:10]


def test_cli_download_kind_upscaler_installs_lists_and_verifies(
    registry: Registry, upscaler_bytes: dict[int, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.hub.add_repo(UPSCALER_REPO, {UPSCALER_FILE: upscaler_bytes[2]})

    done = registry.cli(monkeypatch, "model", "download", UPSCALER_REF, "--kind", "upscaler", "--enable")

    assert done.exit_code == 0, done.stderr
    model = json.loads(done.stdout)["model"]
    assert (model["kind"], model["scale"], model["enabled"]) == ("upscaler", 2, True)
    assert f"({model['id']}), upscaler x2, enabled" in done.stderr
    table = registry.cli(monkeypatch, "model", "list", "--output", "table")
    assert table.exit_code == 0
    header, row = table.stdout.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "KIND"]
    assert "tiny-esrgan-2x_TinyESRGAN" in row and "upscaler x2" in row
    verified = registry.cli(monkeypatch, "model", "verify", UPSCALER_REF)
    assert verified.exit_code == 0 and json.loads(verified.stdout)["ok"]


def test_cli_create_tiny_upscaler(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    made = registry.cli(monkeypatch, "model", "create-tiny", "--kind", "upscaler", "--scale", "2")

    assert made.exit_code == 0, made.stderr
    out = json.loads(made.stdout)
    assert (out["name"], out["kind"], out["scale"], out["layout"]) == (
        "tiny-upscaler",
        "upscaler",
        2,
        "single_file",
    )
    assert "random weights" in out["note"]
    got = json.loads(registry.cli(monkeypatch, "model", "get", "tiny-upscaler").stdout)
    assert (got["kind"], got["scale"], got["enabled"]) == ("upscaler", 2, True)
    default = registry.cli(monkeypatch, "model", "create-tiny", "--kind", "upscaler", "--name", "tiny-x4")
    assert json.loads(default.stdout)["scale"] == 4

    both = registry.cli(monkeypatch, "model", "create-tiny", "--kind", "upscaler", "--single-file")
    assert both.exit_code == 2 and "--single-file applies to checkpoints only" in both.stderr
    scale = registry.cli(monkeypatch, "model", "create-tiny", "--scale", "2")
    assert scale.exit_code == 2 and "--scale applies to --kind upscaler only" in scale.stderr
    assert registry.count() == 2


def test_the_cli_offers_the_registry_kinds() -> None:
    # The CLI spells the kinds out so `--help` loads no registry code; they must not drift apart.
    assert [k.value for k in DownloadKind] == list(KINDS)
