"""`dreamforge demo` and `dreamforge model create-tiny` work on a machine with nothing installed."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from support import cli_env, run_cli

from dreamforge.recipe.infotext import parse_infotext


def test_demo_renders_one_image_from_nothing(tmp_path: Path) -> None:
    result = run_cli(["demo", "--size", "64", "--steps", "3"], cli_env(tmp_path / "var"), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "noise" in result.stderr  # the tiny model is never passed off as a real one
    image_line = next(line for line in result.stdout.splitlines() if line.startswith("image: "))
    path = Path(image_line.removeprefix("image: ").strip())
    assert path.is_file() and path.is_relative_to(tmp_path)
    with Image.open(path) as img:
        _, _, params = parse_infotext(img.text["parameters"])  # type: ignore[attr-defined]
    assert params["Seed"] == "42"
    assert any(line.startswith("url:   http://127.0.0.1:") for line in result.stdout.splitlines())


def test_create_tiny_single_file_then_render_with_it(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "var")
    made = run_cli(["model", "create-tiny", "--name", "tiny-single", "--single-file"], env)
    assert made.returncode == 0, made.stderr
    model = json.loads(made.stdout)
    assert model["layout"] == "single_file"
    assert Path(model["path"]).suffix == ".safetensors"
    assert "noise" in model["note"]
    again = run_cli(["model", "create-tiny", "--name", "tiny-single"], env)
    assert again.returncode == 1
    assert "already registered" in again.stderr
    demo = run_cli(["demo", "--size", "64", "--steps", "2"], env, timeout=300)
    assert demo.returncode == 0, demo.stderr
    assert "Model: tiny-single" in demo.stderr
