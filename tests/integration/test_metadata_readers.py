"""Widely used standalone readers get our infotext back exactly, from PNG and JPEG.

sd-prompt-reader (the A1111/ComfyUI/Fooocus viewer) and sd-parsers read what A1111 writes: the PNG
`parameters` chunk, or the JPEG EXIF `UserComment`. sd-prompt-reader takes ANY JPEG COM segment for
Fooocus's JSON comment, which is why our JPEG recipe lives in XMP and we write no COM segment.

Only sd-prompt-reader's core module is imported (`sd_prompt_reader.image_data_reader`): it needs
Pillow and piexif, no display; its GUI modules (customtkinter, tkinterdnd2) are never loaded.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import pytest
from jpeg_segments import APP1, COM, jpeg_segments, legacy_jpeg
from PIL import Image
from sd_parsers import ParserManager
from sd_parsers.data import Generators
from sd_prompt_reader.format.base_format import BaseFormat
from sd_prompt_reader.image_data_reader import ImageDataReader

from dreamforge.recipe.compose import compose
from dreamforge.recipe.embed import encode_image, read_metadata

PROMPT = "a lighthouse at dawn, volumetric light\nwide angle, 35mm film"
NEGATIVE = "blurry, lowres, watermark"
SEED = 3141592653
WIDTH, HEIGHT = 96, 64
SHA256 = "a5f58eb1c3" + "7e" * 27
PARAMS: dict[str, Any] = {
    "type": "generate",
    "provider": "local-sdxl-epicrealism",
    "prompt": PROMPT,
    "negative_prompt": NEGATIVE,
    "width": WIDTH,
    "height": HEIGHT,
    "steps": 30,
    "guidance": 7.0,
    "scheduler": "dpmpp_2m_karras",
    "seed": SEED,
    "seed_strategy": "fixed",
    "count": 1,
}
MODEL = {
    "id": uuid.uuid4(),
    "name": "epicrealismXL_v8",
    "sha256": SHA256,
    "version": "v8",
    "source": "civitai",
    "extra": {"civitai_version_id": 1234567},
}
RUNTIME = {"dreamforge": "0.1.0", "torch": "2.13.0", "diffusers": "0.42.1", "rng_device": "cpu"}
JOB_ID = uuid.uuid4()
# The parameter line exactly as A1111 would write it for these settings (plus our RNG/Version and
# Civitai's link fields).
PARAMETER_LINE = (
    "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3141592653, "
    "Size: 96x64, Model hash: a5f58eb1c3, Model: epicrealismXL_v8, RNG: CPU, Version: dreamforge 0.1.0, "
    'Hashes: {"model": "a5f58eb1c3"}, Civitai resources: [{"type": "checkpoint", "modelVersionId": 1234567}]'
)


def _render(fmt: str) -> tuple[bytes, str, dict[str, Any]]:
    """An image encoded as the worker does it: (bytes, infotext, recipe)."""
    infotext, recipe = compose(
        job_id=JOB_ID,
        item_index=0,
        count=1,
        params={**PARAMS, "format": fmt},
        seed=SEED,
        model=MODEL,
        runtime=RUNTIME,
    )
    image = Image.new("RGB", (WIDTH, HEIGHT), (40, 80, 120))
    return encode_image(image, fmt, infotext, recipe), infotext, recipe


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_sd_prompt_reader_reads_prompt_and_parameters(fmt: str) -> None:
    data, infotext, _ = _render(fmt)
    assert infotext == f"{PROMPT}\nNegative prompt: {NEGATIVE}\n{PARAMETER_LINE}"
    reader = ImageDataReader(io.BytesIO(data))
    assert reader.status is BaseFormat.Status.READ_SUCCESS
    assert reader.tool == "A1111 webUI"
    assert reader.positive == PROMPT
    assert reader.negative == NEGATIVE
    # Its parsed parameters hold no hash and no schedule: those stay in the setting line.
    assert reader.parameter == {
        "model": "epicrealismXL_v8",
        "sampler": "DPM++ 2M",
        "seed": "3141592653",
        "cfg": "7",
        "steps": "30",
        "size": "96x64",
    }
    assert reader.setting == PARAMETER_LINE
    entries = reader.setting.split(", ")
    assert "Schedule type: Karras" in entries
    assert "Model hash: a5f58eb1c3" in entries
    assert (reader.width, reader.height) == ("96", "64")


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_sd_parsers_reads_prompt_and_parameters(fmt: str) -> None:
    data, _, _ = _render(fmt)
    info = ParserManager().parse(io.BytesIO(data))
    assert info is not None
    assert info.generator is Generators.AUTOMATIC1111
    (sampler,) = info.samplers
    assert [p.value for p in sampler.prompts] == [PROMPT]
    assert [p.value for p in sampler.negative_prompts] == [NEGATIVE]
    assert sampler.name == "DPM++ 2M"
    assert sampler.parameters == {
        "scheduler": "Karras",
        "cfg_scale": "7",
        "seed": "3141592653",
        "steps": "30",
    }
    assert sampler.model is not None
    assert (sampler.model.name, sampler.model.hash) == ("epicrealismXL_v8", "a5f58eb1c3")
    assert info.metadata["Size"] == "96x64"
    assert info.metadata["Hashes"] == {"model": "a5f58eb1c3"}
    assert (info.metadata["RNG"], info.metadata["Version"]) == ("CPU", "dreamforge 0.1.0")
    # sd-parsers' own limitation: it splits the line on every comma and keeps `key: value` pieces
    # with exactly one colon, so Civitai's JSON array (written as Civitai's parser expects it) comes
    # back as a fragment. Nothing it reports for the fields above is affected.
    assert "Civitai resources" not in info.metadata
    assert info.metadata['"modelVersionId"'] == "1234567}]"


def test_jpeg_has_no_com_segment_and_our_reader_gets_the_same_recipe_from_both() -> None:
    png, png_infotext, png_recipe = _render("png")
    jpg, jpg_infotext, jpg_recipe = _render("jpg")
    markers = [marker for marker, _ in jpeg_segments(jpg)]
    assert COM not in markers
    assert markers.count(APP1) == 2  # EXIF UserComment, then XMP with the recipe
    from_png, from_jpg = read_metadata(png), read_metadata(jpg)
    assert from_png.infotext == from_jpg.infotext == png_infotext == jpg_infotext
    assert (from_png.recipe, from_jpg.recipe) == (png_recipe, jpg_recipe)
    # One item rendered twice: the recipes differ only in the file format they record.
    assert from_jpg.recipe is not None
    assert {**from_jpg.recipe, "format": "png"} == from_png.recipe


# sd-prompt-reader logs its format error with the deprecated `Logger.warn`.
@pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")
def test_the_old_com_form_is_what_sd_prompt_reader_could_not_read() -> None:
    _, infotext, recipe = _render("jpg")
    legacy = legacy_jpeg(Image.new("RGB", (WIDTH, HEIGHT)), infotext, recipe)
    assert ImageDataReader(io.BytesIO(legacy)).status is BaseFormat.Status.FORMAT_ERROR
    meta = read_metadata(legacy)
    assert (meta.infotext, meta.recipe) == (infotext, recipe)
