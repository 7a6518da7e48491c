"""End-to-end checks for the tiny SDXL pipeline and the diffusers -> original single-file conversion."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Must be set before huggingface_hub is imported: a stray network lookup should fail loudly, not hang.
os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from dreamforge.registry.original_layout import copy_config_tree, write_single_file  # noqa: E402
from dreamforge.registry.tiny import MARKER, MARKER_FILE, build_tiny_pipeline  # noqa: E402

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
PROMPT = "a lighthouse on a cliff at dusk"


def _render(pipe: Any) -> tuple[Any, bytes]:
    generator = torch.Generator("cpu").manual_seed(42)
    image = pipe(prompt=PROMPT, height=64, width=64, num_inference_steps=4, generator=generator).images[0]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return image, buffer.getvalue()


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sdxl-tiny")


@pytest.fixture(scope="module")
def folder_pipe(tiny_dir: Path) -> Any:
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(tiny_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def single_file_pipe(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("single")
    checkpoint = write_single_file(tiny_dir, out / "sdxl-tiny.safetensors")
    config_dir = copy_config_tree(tiny_dir, out / "config")
    pipe = diffusers.StableDiffusionXLPipeline.from_single_file(
        str(checkpoint), config=str(config_dir), local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_folder_is_small_and_marked(tiny_dir: Path) -> None:
    assert _folder_bytes(tiny_dir) < 10 * 1024 * 1024
    assert json.loads((tiny_dir / MARKER_FILE).read_text(encoding="utf-8")) == MARKER
    merges = (tiny_dir / "tokenizer" / "merges.txt").read_text(encoding="utf-8")
    assert merges.startswith("#version: 0.2")


def test_same_seed_gives_identical_weights(tiny_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_pipeline(tmp_path / "again", seed=0)
    other = build_tiny_pipeline(tmp_path / "other", seed=1)
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (again / weights).read_bytes() == (tiny_dir / weights).read_bytes()
    assert (other / weights).read_bytes() != (tiny_dir / weights).read_bytes()


def test_folder_pipeline_renders_deterministically(folder_pipe: Any) -> None:
    image, first = _render(folder_pipe)
    _, second = _render(folder_pipe)
    assert image.size == (64, 64)
    assert first == second


def test_single_file_round_trip_is_exact(folder_pipe: Any, single_file_pipe: Any) -> None:
    for name in COMPONENTS:
        expected = getattr(folder_pipe, name).state_dict()
        actual = getattr(single_file_pipe, name).state_dict()
        assert actual.keys() == expected.keys(), name
        mismatched = [key for key in expected if not torch.equal(actual[key], expected[key])]
        assert not mismatched, f"{name}: {mismatched[:5]}"
    assert _render(single_file_pipe)[1] == _render(folder_pipe)[1]


def test_tiny_model_modules_import_without_torch_or_sqlalchemy() -> None:
    # The API process must be able to import these modules on a host without the worker extras,
    # and the API's views import the tiny model's note without pulling the registry's database side.
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['diffusers'] = None; "
        "sys.modules['sqlalchemy'] = None; "
        "import dreamforge.registry.tiny, dreamforge.registry.original_layout"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
