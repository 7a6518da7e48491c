"""Images carry their infotext where A1111/Civitai look, and our JSON recipe beside it."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

import piexif
import piexif.helper
from jpeg_segments import APP1, COM, jpeg_segments, legacy_jpeg
from PIL import Image

from dreamforge.recipe.embed import XMP_NS, EmbeddedMetadata, encode_image, read_metadata

XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"

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


def test_jpeg_recipe_is_xmp_after_exif_and_there_is_no_com_segment() -> None:
    recipe = {**RECIPE, "prompt": 'a <b> & "c" ]]> café 🦊\nsecond line', "bad": "\ufffe\ud800"}
    image = _image()
    image.info["comment"] = b"a comment the source image carried"  # Pillow would copy it to COM
    data = encode_image(image, "jpg", INFOTEXT, recipe)
    segments = jpeg_segments(data)
    assert COM not in [marker for marker, _ in segments]
    app1 = [payload for marker, payload in segments if marker == APP1]
    assert [p[:6] for p in app1] == [b"Exif\x00\x00", XMP_HEADER[:6]]
    assert app1[1].startswith(XMP_HEADER)
    # A well-formed XMP packet: the recipe is the text of one property in our namespace.
    root = ET.fromstring(app1[1][len(XMP_HEADER) :])
    assert root.tag == "{adobe:ns:meta/}xmpmeta"
    (prop,) = root.iter(f"{{{XMP_NS}}}recipe")
    assert json.loads(prop.text or "") == recipe
    assert read_metadata(data) == EmbeddedMetadata(infotext=INFOTEXT, recipe=recipe)


def test_jpeg_with_a_com_recipe_from_before_xmp_still_reads() -> None:
    data = legacy_jpeg(_image(), INFOTEXT, RECIPE)
    assert [m for m, _ in jpeg_segments(data) if m in (APP1, COM)] == [APP1, COM]
    meta = read_metadata(data)
    assert (meta.infotext, meta.recipe) == (INFOTEXT, RECIPE)


def test_a_foreign_jpeg_comment_or_xmp_is_not_a_recipe() -> None:
    out = io.BytesIO()
    _image().save(
        out, format="JPEG", comment=b'{"prompt": "fooocus"}', xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"
    )
    assert read_metadata(out.getvalue()).recipe is None


def test_xmp_rewritten_with_the_recipe_as_an_attribute_still_reads() -> None:
    # Compact RDF, as some XMP toolkits re-serialize simple properties.
    recipe_attr = json.dumps(RECIPE).replace('"', "&quot;")
    xmp = (
        "<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>"
        f"<rdf:Description rdf:about='' xmlns:dreamforge='{XMP_NS}' dreamforge:recipe=\"{recipe_attr}\"/>"
        "</rdf:RDF></x:xmpmeta>"
    )
    out = io.BytesIO()
    _image().save(out, format="JPEG", xmp=xmp.encode())
    assert read_metadata(out.getvalue()).recipe == RECIPE


def test_without_metadata_nothing_is_embedded() -> None:
    for fmt in ("png", "jpg"):
        meta = read_metadata(encode_image(_image(), fmt))
        assert meta.infotext is None
        assert meta.recipe is None
