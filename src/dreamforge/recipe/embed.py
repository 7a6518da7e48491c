"""Encode images with their recipe embedded, and read it back.

PNG: a `parameters` text chunk (infotext, as A1111 writes it) and a `dreamforge` iTXt chunk
(the JSON recipe). JPEG: EXIF `UserComment` (infotext, UNICODE-encoded via piexif) and a COM
segment holding the JSON recipe.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import piexif
import piexif.helper
from PIL import Image, PngImagePlugin

RECIPE_KEY = "dreamforge"
INFOTEXT_KEY = "parameters"
_COM_PREFIX = b"dreamforge-recipe:"


@dataclass(frozen=True)
class EmbeddedMetadata:
    """What an image file carries about how it was made."""

    infotext: str | None
    recipe: dict[str, Any] | None


def encode_image(
    image: Image.Image, fmt: str, infotext: str | None = None, recipe: dict[str, Any] | None = None
) -> bytes:
    """Encode `image` as `png` or `jpg`, embedding the infotext and recipe when given."""
    out = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        if infotext is not None:
            # Pillow writes tEXt when the text is Latin-1 and iTXt otherwise, as A1111 does.
            info.add_text(INFOTEXT_KEY, infotext)
        if recipe is not None:
            info.add_itxt(RECIPE_KEY, json.dumps(recipe, sort_keys=True, ensure_ascii=False))
        image.save(out, format="PNG", pnginfo=info)
    elif fmt == "jpg":
        kwargs: dict[str, Any] = {"quality": 95}
        if infotext is not None:
            comment = piexif.helper.UserComment.dump(infotext, encoding="unicode")
            kwargs["exif"] = piexif.dump({"Exif": {piexif.ExifIFD.UserComment: comment}})
        if recipe is not None:
            kwargs["comment"] = _COM_PREFIX + json.dumps(recipe, sort_keys=True).encode()
        image.convert("RGB").save(out, format="JPEG", **kwargs)
    else:
        raise ValueError(f"unsupported format {fmt!r}")
    return out.getvalue()


def read_metadata(data: bytes) -> EmbeddedMetadata:
    """The infotext and recipe embedded in PNG or JPEG bytes (None where absent)."""
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "PNG":
            text = getattr(img, "text", {})
            recipe_raw = text.get(RECIPE_KEY)
            return EmbeddedMetadata(
                infotext=text.get(INFOTEXT_KEY), recipe=json.loads(recipe_raw) if recipe_raw else None
            )
        infotext = None
        exif_raw = img.info.get("exif")
        if exif_raw:
            comment = piexif.load(exif_raw).get("Exif", {}).get(piexif.ExifIFD.UserComment)
            if comment:
                infotext = piexif.helper.UserComment.load(comment)
        recipe = None
        com = img.info.get("comment")
        if isinstance(com, bytes) and com.startswith(_COM_PREFIX):
            recipe = json.loads(com[len(_COM_PREFIX) :])
        return EmbeddedMetadata(infotext=infotext, recipe=recipe)
