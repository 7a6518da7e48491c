"""Images carry their infotext where A1111/Civitai look, and our JSON recipe beside it."""

from __future__ import annotations

import io

import piexif
import piexif.helper
from PIL import Image

from dreamforge.recipe.embed import encode_image, read_metadata

INFOTEXT = "a café at night\nSteps: 4, Sampler: UniPC, CFG scale: 7, Seed: 1, Size: 64x64"
RECIPE = {"seed": 1, "model": {"sha256": "ab" * 32}}


def _image() -> Image.Image:
    return Image.new("RGB", (64, 64), (10, 20, 30))


def test_png_has_parameters_text_chunk_and_recipe() -> None:
    data = encode_image(_image(), "png", INFOTEXT, RECIPE)
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        assert img.text["parameters"] == INFOTEXT  # type: ignore[attr-defined]
    meta = read_metadata(data)
    assert meta.recipe == RECIPE


def test_jpeg_user_comment_is_unicode_exif() -> None:
    data = encode_image(_image(), "jpg", INFOTEXT, RECIPE)
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG"
        raw = piexif.load(img.info["exif"])["Exif"][piexif.ExifIFD.UserComment]
    assert raw.startswith(b"UNICODE\x00")
    assert piexif.helper.UserComment.load(raw) == INFOTEXT
    assert read_metadata(data).recipe == RECIPE


def test_without_metadata_nothing_is_embedded() -> None:
    for fmt in ("png", "jpg"):
        meta = read_metadata(encode_image(_image(), fmt))
        assert meta.infotext is None
        assert meta.recipe is None
