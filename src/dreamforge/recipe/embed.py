"""Encode images with their recipe embedded, and read it back.

PNG: a `parameters` text chunk (infotext, as A1111 writes it) and a `dreamforge` iTXt chunk
(the JSON recipe). JPEG: EXIF `UserComment` (infotext, UNICODE-encoded via piexif, as A1111
writes it) and an XMP packet in its own APP1 segment holding the JSON recipe. No COM segment:
A1111 writes none, and readers such as sd-prompt-reader take any JPEG comment for Fooocus's
JSON and then never reach the `UserComment`. JPEGs written before the move to XMP carry the
recipe in a COM segment (`dreamforge-recipe:{…}`); `read_metadata` still reads those.
"""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

import piexif
import piexif.helper
from PIL import Image, PngImagePlugin

RECIPE_KEY = "dreamforge"
INFOTEXT_KEY = "parameters"
# XMP is the standard home for custom metadata in a JPEG: an APP1 segment headed by
# `http://ns.adobe.com/xap/1.0/\0` with an RDF packet, each vendor's properties in its own
# namespace. Tools that do not know the namespace skip it; exiftool and Adobe's SDK show it.
XMP_NS = "https://dreamforge.dev/ns/recipe/1.0/"
XMP_PROPERTY = "recipe"
# The pre-XMP JPEG form: a COM segment holding this prefix and the JSON recipe. Read, never written.
_COM_PREFIX = b"dreamforge-recipe:"
# Characters that XML 1.0 forbids but `json.dumps(ensure_ascii=False)` leaves raw inside strings
# (control characters are already escaped by JSON); written as JSON `\uXXXX` escapes instead.
_XML_FORBIDDEN = re.compile("[\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class EmbeddedMetadata:
    """What an image file carries about how it was made."""

    infotext: str | None
    recipe: dict[str, Any] | None


def _xmp_packet(recipe: dict[str, Any]) -> bytes:
    """An XMP packet (UTF-8) with the JSON recipe as the text of `dreamforge:recipe`, XML-escaped."""
    text = json.dumps(recipe, sort_keys=True, ensure_ascii=False)
    text = _XML_FORBIDDEN.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    packet = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        f'  <rdf:Description rdf:about="" xmlns:{RECIPE_KEY}="{XMP_NS}">\n'
        f"   <{RECIPE_KEY}:{XMP_PROPERTY}>{escape(text)}</{RECIPE_KEY}:{XMP_PROPERTY}>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    )
    return packet.encode("utf-8")


def _recipe_from_xmp(xmp: bytes) -> dict[str, Any] | None:
    """The recipe in an XMP packet: our property as an element or (as some tools rewrite it) an attribute."""
    try:
        root = ET.fromstring(xmp)
    except ET.ParseError:
        return None
    name = f"{{{XMP_NS}}}{XMP_PROPERTY}"
    for element in root.iter():
        raw = element.text if element.tag == name else element.get(name)
        if raw:
            recipe: dict[str, Any] = json.loads(raw)
            return recipe
    return None


# zlib level of our PNGs (Pillow's default is 6). Lossless either way; on a 1024x1024 photograph
# here, level 4 encoded in 108 ms instead of 272 for a file 4 % larger (1 gave 60 ms, 13 % larger).
# The encode runs once per image while a GPU waits, so its time is the service's overhead per job.
PNG_COMPRESS_LEVEL = 4


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
        image.save(out, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    elif fmt == "jpg":
        kwargs: dict[str, Any] = {"quality": 95}
        if infotext is not None:
            comment = piexif.helper.UserComment.dump(infotext, encoding="unicode")
            kwargs["exif"] = piexif.dump({"Exif": {piexif.ExifIFD.UserComment: comment}})
        if recipe is not None:
            # Pillow (>= 11) writes the XMP APP1 segment right after the EXIF APP1.
            kwargs["xmp"] = _xmp_packet(recipe)
        rgb = image.convert("RGB")
        # Pillow would copy a comment carried in the source image's info into a COM segment.
        rgb.info.pop("comment", None)
        rgb.save(out, format="JPEG", **kwargs)
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
        xmp = img.info.get("xmp")
        if isinstance(xmp, bytes):
            recipe = _recipe_from_xmp(xmp)
        com = img.info.get("comment")
        if recipe is None and isinstance(com, bytes) and com.startswith(_COM_PREFIX):
            recipe = json.loads(com[len(_COM_PREFIX) :])
        return EmbeddedMetadata(infotext=infotext, recipe=recipe)
