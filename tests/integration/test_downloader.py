"""The model downloader against local servers that answer like the Hugging Face Hub and Civitai.

The real downloader runs: huggingface_hub reaches the fake Hub through `HF_ENDPOINT`, and Civitai
is reached through `DF_CIVITAI_ENDPOINT`. Each test asserts what a user would notice: what got
installed and registered, which bytes crossed the wire, and what the error says.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import SDXL_CONFIG_REPO, folder_bytes
from fakehubs import FakeCivitai, FakeHub
from huggingface_hub import constants as hf_constants
from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from dreamforge.config import Settings
from dreamforge.db.migrate import upgrade_to_head
from dreamforge.db.session import create_db_engine, make_session_factory
from dreamforge.db.tables import Model
from dreamforge.registry.download import DownloadResult, ModelDownloader
from dreamforge.registry.formats import UnsafeFile
from dreamforge.registry.refs import parse_ref
from dreamforge.registry.transfer import (
    AuthRequired,
    ChecksumMismatch,
    DownloadError,
    NotAModel,
    RemoteNotFound,
    TransferFailed,
)
from dreamforge.registry.verify import verify_model

TINY_REPO = "acme/tiny-sdxl"
SINGLE_REPO = "acme/tiny-sdxl-single"


@dataclass
class Notes:
    """A progress sink that keeps what a user would have seen."""

    lines: list[str] = field(default_factory=list)
    started: list[tuple[str, int | None, int]] = field(default_factory=list)

    def start(self, name: str, total: int | None, done: int) -> None:
        self.started.append((name, total, done))

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def note(self, message: str) -> None:
        self.lines.append(message)


@dataclass
class Registry:
    """A fresh registry (SQLite + models dir) wired to the fake sources."""

    settings: Settings
    sessions: sessionmaker[Session]
    hub: FakeHub
    civitai: FakeCivitai
    notes: Notes = field(default_factory=Notes)

    def download(
        self,
        ref: str,
        *,
        civitai_token: str | None = None,
        attempts: int = 3,
        **kwargs: Any,
    ) -> DownloadResult:
        settings = self.settings.model_copy(
            update={
                "civitai_token": SecretStr(civitai_token) if civitai_token else None,
                "download_attempts": attempts,
            }
        )
        with httpx.Client(timeout=10) as client:
            downloader = ModelDownloader(settings, self.sessions, client, self.notes, backoff_initial=0.01)
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

    @property
    def models_dir(self) -> Path:
        return self.settings.models_dir


@pytest.fixture
def registry(
    tmp_path: Path, fake_hub: FakeHub, fake_civitai: FakeCivitai, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Registry]:
    # The test session runs offline (conftest); downloads may reach the fake Hub only.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    settings = Settings(data_dir=tmp_path / "var", civitai_endpoint=fake_civitai.url, _env_file=None)
    settings.ensure_dirs()
    upgrade_to_head(settings.database_url)
    engine = create_db_engine(settings.database_url)
    try:
        yield Registry(settings, make_session_factory(engine), fake_hub, fake_civitai)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_single_file: tuple[Path, Path]) -> bytes:
    return tiny_single_file[0].read_bytes()


def _tiny_repo_files(tiny_model_dir: Path) -> dict[str, bytes]:
    files = folder_bytes(tiny_model_dir)
    # What real SDXL repos also carry, none of which a pipeline on our engine needs.
    files["unet/diffusion_pytorch_model.bin"] = b"PK\x03\x04 pickled weights"
    files["sd_xl_base_1.0.safetensors"] = files["unet/diffusion_pytorch_model.safetensors"]
    files["vae_decoder/model.onnx"] = b"onnx"
    files["README.md"] = b"# tiny\n"
    return files


def _config_bytes(registry: Registry, result: DownloadResult) -> int:
    """Bytes of the config files a single-file install fetches besides its checkpoint."""
    return sum(f["size"] for f in registry.model(result.model.id).files if f["path"].startswith("config/"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_diffusers_repo_installs_only_pipeline_files_pinned_to_the_commit(
    registry: Registry, tiny_model_dir: Path
) -> None:
    commit = registry.hub.add_repo(TINY_REPO, _tiny_repo_files(tiny_model_dir))

    result = registry.download(f"hf:{TINY_REPO}", enable=True)

    model = registry.model(result.model.id)
    root = registry.models_dir / "tiny-sdxl"
    assert model.path == str(root.resolve())
    assert (model.layout, model.source, model.revision) == ("diffusers", f"hf:{TINY_REPO}", commit)
    assert model.enabled and model.installed and model.kind == "sdxl-checkpoint"
    installed = {f["path"] for f in model.files}
    expected = {p for p in folder_bytes(tiny_model_dir) if "/" in p or p == "model_index.json"}
    assert installed == expected
    for record in model.files:
        assert _sha((root / record["path"]).read_bytes()) == record["sha256"]
    assert not (root / "unet/diffusion_pytorch_model.bin").exists()
    assert not (root / "sd_xl_base_1.0.safetensors").exists()
    # Every file was asked for at the pinned commit, never at a moving branch.
    resolves = registry.hub.hits(server="api", path_contains="/resolve/")
    assert resolves and all(f"/resolve/{commit}/" in h.path for h in resolves)
    assert not any(registry.models_dir.joinpath(".downloads").iterdir())


def test_fp16_variants_are_preferred_when_a_repo_offers_them(
    registry: Registry, tiny_model_dir: Path
) -> None:
    files = folder_bytes(tiny_model_dir)
    for path in [p for p in files if p.endswith("/diffusion_pytorch_model.safetensors")]:
        files[path.replace(".safetensors", ".fp16.safetensors")] = files[path]
    registry.hub.add_repo(TINY_REPO, files)

    model = registry.model(registry.download(f"hf:{TINY_REPO}").model.id)

    weights = sorted(f["path"] for f in model.files if f["path"].endswith(".safetensors"))
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in weights
    assert "unet/diffusion_pytorch_model.safetensors" not in weights
    assert "text_encoder/model.safetensors" in weights  # no fp16 variant offered: the plain weights
    assert not model.enabled  # only --enable makes a download available to jobs

    # A CPU worker (fp32) loads the fp16-only components through their variant and renders.
    from dreamforge.engines.base import ModelSpec, RenderRequest
    from dreamforge.engines.sdxl import SDXLEngine

    spec = ModelSpec(
        id=model.id,
        name=model.name,
        layout=model.layout,
        path=model.path,
        config_path=None,
        sha256=model.sha256,
    )
    request = RenderRequest(
        prompt="a red cube",
        negative_prompt=None,
        width=64,
        height=64,
        steps=2,
        guidance=5.0,
        scheduler="dpmpp_2m_karras",
    )
    [image] = SDXLEngine(device="cpu", dtype="float32").render(spec, request, [7], lambda _s, _t: None)
    assert image.size == (64, 64)


def test_single_file_from_the_hub_brings_its_config_and_tokenizers(
    registry: Registry, tiny_checkpoint: bytes
) -> None:
    registry.hub.add_repo(SINGLE_REPO, {"tiny.safetensors": tiny_checkpoint, "tiny.ckpt": b"pickle"})
    config_commit = registry.hub.commit_sha(SDXL_CONFIG_REPO)

    model = registry.model(registry.download(f"hf:{SINGLE_REPO}#tiny.safetensors").model.id)

    checkpoint = Path(model.path)
    assert checkpoint.name == "tiny.safetensors"
    assert model.sha256 == _sha(tiny_checkpoint)
    assert model.source == f"hf:{SINGLE_REPO}#tiny.safetensors"
    assert model.config_path == str(checkpoint.parent / "config")
    for needed in (
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "text_encoder_2/config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer_2/vocab.json",
    ):
        assert (checkpoint.parent / "config" / needed).is_file(), needed
    assert model.extra["config_repo"] == SDXL_CONFIG_REPO
    assert model.extra["config_commit"] == config_commit


def test_civitai_version_installs_the_primary_file_with_its_published_hash(
    registry: Registry, tiny_checkpoint: bytes
) -> None:
    registry.civitai.add_version(
        4201,
        77,
        tiny_checkpoint,
        filename="epicrealismXL_tiny.safetensors",
        model_name="epiCRealism XL",
        version_name="v1 tiny",
        extra_files=[("config.yaml", b"model: {}\n", "Config")],
    )

    result = registry.download("civitai:4201", enable=True)

    model = registry.model(result.model.id)
    assert model.name == "epiCRealism-XL-v1-tiny"
    assert (model.source, model.revision, model.version) == ("civitai:4201", "4201", "v1 tiny")
    assert Path(model.path).name == "epicrealismXL_tiny.safetensors"
    assert model.sha256 == _sha(tiny_checkpoint)
    assert model.extra["civitai_version_id"] == 4201 and model.extra["civitai_model_id"] == 77
    assert model.extra["base_model"] == "SDXL 1.0"
    downloads = registry.civitai.hits(server="api", path_contains="/api/download/models/4201")
    assert downloads and downloads[0].status == 307
    assert sum(h.bytes_sent for h in registry.civitai.hits(server="cdn")) == len(tiny_checkpoint)
    assert result.fetched_bytes >= len(tiny_checkpoint)


def test_civitai_token_goes_to_civitai_only_never_along_the_redirect(
    registry: Registry, tiny_checkpoint: bytes
) -> None:
    registry.civitai.add_version(9, 1, tiny_checkpoint, requires_auth=True)

    with pytest.raises(AuthRequired, match="CIVITAI_TOKEN"):
        registry.download("civitai:9")
    result = registry.download("civitai:9", civitai_token=registry.civitai.token)

    assert result.model.sha256 == _sha(tiny_checkpoint)
    bearer = f"Bearer {registry.civitai.token}"
    api_hits = registry.civitai.hits(server="api", path_contains="/api/download/")
    assert api_hits[-1].headers.get("authorization") == bearer
    cdn_hits = registry.civitai.hits(server="cdn")
    assert cdn_hits and all("authorization" not in h.headers for h in cdn_hits)
    assert all(registry.civitai.token not in json.dumps(h.query) for h in cdn_hits)


def test_hf_token_goes_to_the_hub_only_never_to_its_cdn(
    registry: Registry, tiny_checkpoint: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.hub.add_repo(SINGLE_REPO, {"tiny.safetensors": tiny_checkpoint}, private=True)
    with pytest.raises(RemoteNotFound, match="HF_TOKEN"):
        registry.download(f"hf:{SINGLE_REPO}#tiny.safetensors")

    monkeypatch.setenv("HF_TOKEN", registry.hub.token)
    registry.download(f"hf:{SINGLE_REPO}#tiny.safetensors")

    resolve = registry.hub.hits(server="api", path_contains="/resolve/")
    assert all(h.headers.get("authorization") == f"Bearer {registry.hub.token}" for h in resolve)
    cdn = registry.hub.hits(server="cdn")
    assert cdn and all("authorization" not in h.headers for h in cdn)


def test_gated_repo_says_which_token_to_set(registry: Registry, tiny_checkpoint: bytes) -> None:
    registry.hub.add_repo(SINGLE_REPO, {"tiny.safetensors": tiny_checkpoint}, gated=True)

    with pytest.raises(AuthRequired, match="HF_TOKEN"):
        registry.download(f"hf:{SINGLE_REPO}#tiny.safetensors")
    assert registry.count() == 0


def test_a_dropped_connection_resumes_without_fetching_bytes_again(
    registry: Registry, tiny_checkpoint: bytes
) -> None:
    registry.civitai.add_version(11, 2, tiny_checkpoint, filename="tiny.safetensors")
    cut = len(tiny_checkpoint) // 3
    registry.civitai.drop_once("tiny.safetensors", after_bytes=cut)

    result = registry.download("civitai:11")

    gets = [h for h in registry.civitai.hits(server="cdn") if h.method == "GET"]
    assert [h.range for h in gets] == [None, f"bytes={cut}-"]
    assert [h.bytes_sent for h in gets] == [cut, len(tiny_checkpoint) - cut]
    assert result.fetched_bytes == len(tiny_checkpoint) + _config_bytes(registry, result)
    assert result.model.sha256 == _sha(tiny_checkpoint)
    assert any(f"resuming at {cut:,}" in line for line in registry.notes.lines)


def test_an_interrupted_download_resumes_in_the_next_run(registry: Registry, tiny_checkpoint: bytes) -> None:
    registry.civitai.add_version(12, 2, tiny_checkpoint, filename="tiny.safetensors")
    cut = len(tiny_checkpoint) // 2
    registry.civitai.drop_once("tiny.safetensors", after_bytes=cut)

    with pytest.raises(TransferFailed, match="again to resume"):
        registry.download("civitai:12", attempts=1)
    assert registry.count() == 0
    registry.civitai.clear_hits()

    result = registry.download("civitai:12")

    gets = [h for h in registry.civitai.hits(server="cdn") if h.method == "GET"]
    assert [(h.range, h.bytes_sent) for h in gets] == [(f"bytes={cut}-", len(tiny_checkpoint) - cut)]
    assert result.fetched_bytes == len(tiny_checkpoint) - cut + _config_bytes(registry, result)
    assert result.model.sha256 == _sha(tiny_checkpoint)


def test_bytes_that_do_not_match_the_published_sha256_are_never_installed(
    registry: Registry, tiny_checkpoint: bytes
) -> None:
    registry.civitai.add_version(13, 3, tiny_checkpoint, filename="tiny.safetensors")
    tampered = bytearray(tiny_checkpoint)
    tampered[-1] ^= 0xFF
    registry.civitai.serve_instead("tiny.safetensors", bytes(tampered))

    with pytest.raises(ChecksumMismatch, match=r"tiny\.safetensors.*SHA-256.*nothing was installed"):
        registry.download("civitai:13")

    assert registry.count() == 0
    assert not any(p.is_file() for p in registry.models_dir.rglob("*.safetensors*"))


def test_an_html_page_instead_of_the_file_is_reported_not_saved(
    registry: Registry, tiny_checkpoint: bytes
) -> None:
    registry.civitai.add_version(14, 4, tiny_checkpoint, filename="tiny.safetensors")
    registry.civitai.html_instead("tiny.safetensors")

    with pytest.raises(NotAModel, match="web page or an error message instead of the file"):
        registry.download("civitai:14")
    registry.civitai.clear_faults()
    registry.civitai.serve_instead("tiny.safetensors", b'{"error": "Unauthorized", "message": "log in"}')
    with pytest.raises(NotAModel, match="Unauthorized"):
        registry.download("civitai:14")

    assert registry.count() == 0
    assert not any(p.is_file() for p in registry.models_dir.rglob("*.safetensors*"))


def test_a_server_filename_cannot_escape_the_models_folder(
    registry: Registry, tiny_checkpoint: bytes
) -> None:
    registry.civitai.add_version(15, 5, tiny_checkpoint, filename="tiny.safetensors")
    registry.civitai.disposition_filename(15, "../../../evil.safetensors")

    model = registry.model(registry.download("civitai:15", name="safe-name").model.id)

    assert Path(model.path) == (registry.models_dir / "safe-name" / "evil.safetensors").resolve()
    assert not (registry.settings.data_dir / "evil.safetensors").exists()
    assert not (registry.models_dir / "evil.safetensors").exists()
    assert [p.name for p in registry.settings.data_dir.parent.glob("*.safetensors")] == []


def test_pickle_checkpoints_are_refused_before_any_byte_is_fetched(
    registry: Registry, tiny_model_dir: Path
) -> None:
    registry.civitai.add_version(16, 6, b"pickle", filename="model.ckpt", fmt="PickleTensor")
    registry.hub.add_repo(SINGLE_REPO, {"model.ckpt": b"pickle"})
    pickled = {p: d for p, d in folder_bytes(tiny_model_dir).items() if not p.startswith("unet/")}
    pickled["unet/config.json"] = folder_bytes(tiny_model_dir)["unet/config.json"]
    pickled["unet/diffusion_pytorch_model.bin"] = b"pickle"
    registry.hub.add_repo(TINY_REPO, pickled)

    for ref in ("civitai:16", f"hf:{SINGLE_REPO}#model.ckpt", f"hf:{TINY_REPO}"):
        with pytest.raises(UnsafeFile, match=r"pickle checkpoints .* can run arbitrary code"):
            registry.download(ref)
    assert registry.civitai.hits(server="cdn") == []
    assert not [h for h in registry.hub.hits() if h.path.endswith((".ckpt", ".bin"))]
    assert registry.count() == 0


def test_rate_limits_are_waited_out(registry: Registry, tiny_checkpoint: bytes) -> None:
    registry.civitai.add_version(17, 7, tiny_checkpoint)
    registry.civitai.rate_limit(1, retry_after=0)

    assert registry.download("civitai:17").model.sha256 == _sha(tiny_checkpoint)
    assert [h.status for h in registry.civitai.hits(server="api")][:1] == [429]


def test_unknown_sources_say_so(registry: Registry) -> None:
    with pytest.raises(RemoteNotFound, match="no model version"):
        registry.download("civitai:404404")
    with pytest.raises(RemoteNotFound, match="was not found"):
        registry.download("hf:acme/missing")
    registry.hub.add_repo(SINGLE_REPO, {"README.md": b"hi"})
    with pytest.raises(RemoteNotFound, match="no such revision"):
        registry.download(f"hf:{SINGLE_REPO}@nope#tiny.safetensors")


def test_downloading_again_reuses_the_install(registry: Registry, tiny_checkpoint: bytes) -> None:
    registry.civitai.add_version(18, 8, tiny_checkpoint)
    first = registry.download("civitai:18")
    registry.civitai.clear_hits()

    again = registry.download("civitai:18", enable=True)

    assert again.already_installed and again.fetched_bytes == 0
    assert again.model.id == first.model.id and registry.model(first.model.id).enabled
    assert registry.civitai.hits(server="cdn") == []


def test_verify_names_the_file_with_a_flipped_byte(registry: Registry, tiny_model_dir: Path) -> None:
    registry.hub.add_repo(TINY_REPO, folder_bytes(tiny_model_dir))
    model = registry.model(registry.download(f"hf:{TINY_REPO}").model.id)
    assert verify_model(model).ok

    target = Path(model.path) / "vae/diffusion_pytorch_model.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))

    report = verify_model(model)
    assert not report.ok
    bad = [f for f in report.files if f.status != "ok"]
    assert [(f.path, f.status) for f in bad] == [("vae/diffusion_pytorch_model.safetensors", "modified")]
    assert bad[0].actual == _sha(bytes(data))


def test_downloads_register_in_postgres_too(
    pg_url: str,
    tmp_path: Path,
    fake_hub: FakeHub,
    fake_civitai: FakeCivitai,
    tiny_checkpoint: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The distributed topology's registry: a worker host downloads into the shared Postgres."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    settings = Settings(
        data_dir=tmp_path / "var", db_url=pg_url, civitai_endpoint=fake_civitai.url, _env_file=None
    )
    settings.ensure_dirs()
    upgrade_to_head(pg_url)
    engine = create_db_engine(pg_url)
    try:
        registry = Registry(settings, make_session_factory(engine), fake_hub, fake_civitai)
        fake_civitai.add_version(21, 9, tiny_checkpoint)
        model = registry.model(registry.download("civitai:21", enable=True).model.id)
        assert model.enabled and model.files[0]["sha256"] == _sha(tiny_checkpoint)
        assert verify_model(model).ok
        assert registry.download("civitai:21").already_installed
    finally:
        engine.dispose()


def test_jobs_without_model_id_prefer_the_default_providers_checkpoint(
    registry: Registry, tiny_model_dir: Path
) -> None:
    from dreamforge.registry.install import register_model
    from dreamforge.registry.selection import resolve_model

    with registry.sessions.begin() as s:
        register_model(s, name="epicrealism-xl-v1", layout="diffusers", path=tiny_model_dir)
        register_model(s, name="newer-other-model", layout="diffusers", path=tiny_model_dir)
    with registry.sessions() as s:
        assert resolve_model(s, None).name == "epicrealism-xl-v1"
        assert resolve_model(s, None, default_name="newer-other-model").name == "newer-other-model"


def test_a_download_that_cannot_fit_on_disk_stops_before_fetching(
    registry: Registry, tiny_checkpoint: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    registry.civitai.add_version(22, 9, tiny_checkpoint, filename="tiny.safetensors")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))

    with pytest.raises(DownloadError, match="only 1,000 are free"):
        registry.download("civitai:22")
    assert [h for h in registry.civitai.hits(server="cdn") if h.method == "GET"] == []
