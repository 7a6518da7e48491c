"""The spandrel upscaler on real (tiny, random-weight) ESRGAN files: detection, sizes, tiles, refusals."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from dreamforge.engines.base import EngineError, ModelSpec, OutOfMemory
from dreamforge.engines.upscale import SpandrelUpscaler, describe_upscaler, plan_passes, tile_grid


def _spec(path: Path) -> ModelSpec:
    return ModelSpec(
        id=uuid.uuid4(), name=path.stem, layout="single_file", path=str(path), config_path=None, sha256="0"
    )


def _image(width: int = 72, height: int = 56) -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def test_the_architecture_and_scale_come_from_the_weights(tiny_upscalers: dict[int, Path]) -> None:
    for scale, path in tiny_upscalers.items():
        info = describe_upscaler(path)
        assert (info.architecture, info.scale) == ("ESRGAN", scale)


@pytest.mark.parametrize(("native", "scale", "passes"), [(2, 2, 1), (2, 4, 2), (4, 2, 1), (4, 4, 1)])
def test_any_model_reaches_exactly_the_asked_scale(
    tiny_upscalers: dict[int, Path], native: int, scale: int, passes: int
) -> None:
    assert plan_passes(native, scale) == passes
    steps: list[tuple[int, int]] = []
    out = SpandrelUpscaler(tile=0).upscale(
        _spec(tiny_upscalers[native]), _image(), scale, lambda s, n: steps.append((s, n))
    )
    assert out.size == (72 * scale, 56 * scale)
    assert steps == [(i, passes) for i in range(1, passes + 1)]


def test_tiles_give_the_same_image_as_one_pass(tiny_upscalers: dict[int, Path]) -> None:
    spec = _spec(tiny_upscalers[4])
    steps: list[tuple[int, int]] = []
    tiled = SpandrelUpscaler(tile=32).upscale(spec, _image(), 4, lambda s, n: steps.append((s, n)))
    whole = SpandrelUpscaler(tile=0).upscale(spec, _image(), 4, lambda s, n: None)
    assert len(tile_grid(72, 56, 32)) == 6
    assert steps[-1] == (6, 6)
    assert np.array_equal(np.asarray(tiled), np.asarray(whole))


def test_pickles_and_files_that_are_no_upscaler_are_refused(
    tmp_path: Path, tiny_upscalers: dict[int, Path]
) -> None:
    pickle = tmp_path / "RealESRGAN_x4plus.pth"
    pickle.write_bytes(tiny_upscalers[4].read_bytes())
    with pytest.raises(EngineError, match=r"only \.safetensors upscalers"):
        describe_upscaler(pickle)
    other = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.zeros(1)}, str(other))
    with pytest.raises(EngineError, match="recognises no upscaler architecture"):
        describe_upscaler(other)
    with pytest.raises(EngineError) as missing:
        SpandrelUpscaler().load(_spec(tmp_path / "gone.safetensors"))
    assert missing.value.code == "model_files_missing"


def test_running_out_of_memory_says_how_to_tile_smaller(
    tiny_upscalers: dict[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    upscaler = SpandrelUpscaler(tile=256)
    spec = _spec(tiny_upscalers[2])
    upscaler.load(spec)

    def no_memory(*_: Any) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(upscaler, "_one_pass", no_memory)
    with pytest.raises(OutOfMemory, match="lower DF_UPSCALE_TILE \\(now 256\\)") as caught:
        upscaler.upscale(spec, _image(), 2, lambda s, n: None)
    assert caught.value.code == "gpu_oom"
