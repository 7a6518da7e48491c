"""The SDXL engine renders through diffusers from a folder and from a single file, deterministically."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import pytest

from dreamforge.engines.base import EngineError, ModelSpec, OutOfMemory, RenderRequest
from dreamforge.engines.sdxl import SDXLEngine


def _spec(path: Path, layout: str = "diffusers", config: Path | None = None) -> ModelSpec:
    return ModelSpec(
        id=uuid.uuid4(),
        name="tiny",
        layout=layout,
        path=str(path),
        config_path=str(config) if config else None,
        sha256="0" * 64,
    )


def _request(scheduler: str = "dpmpp_2m_karras") -> RenderRequest:
    return RenderRequest(
        prompt="a red cube",
        negative_prompt="blurry",
        width=64,
        height=64,
        steps=4,
        guidance=5.0,
        scheduler=scheduler,
    )


def _png(engine: SDXLEngine, spec: ModelSpec, request: RenderRequest, seed: int = 7) -> bytes:
    out = io.BytesIO()
    [image] = engine.render(spec, request, [seed], lambda _s, _t: None)
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def engine() -> SDXLEngine:
    return SDXLEngine(device="cpu", dtype="float32")


def test_same_seed_same_bytes_other_seed_other_image(engine: SDXLEngine, tiny_model_dir: Path) -> None:
    spec = _spec(tiny_model_dir)
    first = _png(engine, spec, _request(), seed=7)
    assert _png(engine, spec, _request(), seed=7) == first
    assert _png(engine, spec, _request(), seed=8) != first


def test_each_step_is_reported(engine: SDXLEngine, tiny_model_dir: Path) -> None:
    steps: list[tuple[int, int]] = []
    [image] = engine.render(_spec(tiny_model_dir), _request(), [7], lambda s, t: steps.append((s, t)))
    assert image.size == (64, 64)
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize("scheduler", ["dpmpp_2m_karras", "unipc"])
def test_schedulers_render_different_images(engine: SDXLEngine, tiny_model_dir: Path, scheduler: str) -> None:
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    spec = _spec(tiny_model_dir)
    png = _png(engine, spec, _request(scheduler=scheduler))
    sched: Any = engine._pipe.scheduler
    if scheduler == "unipc":
        assert isinstance(sched, UniPCMultistepScheduler)
    else:
        assert isinstance(sched, DPMSolverMultistepScheduler)
        config: Any = engine._pipe.scheduler.config
        assert config.use_karras_sigmas is True
        assert config.algorithm_type == "dpmsolver++"
    other = "unipc" if scheduler == "dpmpp_2m_karras" else "dpmpp_2m_karras"
    assert _png(engine, spec, _request(scheduler=other)) != png


def test_single_file_checkpoint_renders_the_same_image(
    engine: SDXLEngine, tiny_model_dir: Path, tiny_single_file: tuple[Path, Path]
) -> None:
    checkpoint, config = tiny_single_file
    folder_png = _png(engine, _spec(tiny_model_dir), _request())
    single_png = _png(engine, _spec(checkpoint, "single_file", config), _request())
    assert single_png == folder_png


def test_missing_files_are_a_clear_engine_error(tmp_path: Path) -> None:
    engine = SDXLEngine(device="cpu")
    with pytest.raises(EngineError) as info:
        engine.load(_spec(tmp_path / "gone"))
    assert info.value.code == "model_files_missing"


def test_cpu_defaults_to_float32() -> None:
    engine = SDXLEngine(device="cpu")
    info = engine.runtime_info()
    assert (info["device"], info["dtype"], info["rng_device"]) == ("cpu", "float32", "cpu")


def test_cpu_renders_leave_a_core_for_serving_unless_told_otherwise() -> None:
    import os

    import torch

    before = torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
        assert SDXLEngine(device="cpu").runtime_info()["cpu_threads"] == str(max(1, cores - 1))
        assert torch.get_num_threads() == max(1, cores - 1)
        # The setting wins, and the recipe records what the image was rendered with.
        assert SDXLEngine(device="cpu", cpu_threads=3).runtime_info()["cpu_threads"] == "3"
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_an_oom_in_the_vae_decode_does_not_break_the_next_render(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fp16 with SDXL's VAE: diffusers upcasts the VAE to fp32 for the decode. An OOM there once left
    # it fp32, and every later render failed on a half/float mismatch (seen on an H200).
    import torch

    engine = SDXLEngine(device="cpu", dtype="float16")
    spec = _spec(tiny_model_dir)
    engine.load(spec)
    vae = engine._pipe.vae
    decode = vae.decode

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(vae, "decode", decode)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")

    monkeypatch.setattr(vae, "decode", out_of_memory)
    with pytest.raises(OutOfMemory):
        engine.render(spec, _request(), [7], lambda _s, _t: None)
    [image] = engine.render(spec, _request(), [7], lambda _s, _t: None)
    assert image.size == (64, 64)
    assert vae.dtype == torch.float16
