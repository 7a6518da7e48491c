"""Walk a JPEG's marker segments (SOI up to the start of scan), for tests that check what we write."""

from __future__ import annotations

import io
import json
from typing import Any

import piexif
import piexif.helper
from PIL import Image

APP1 = 0xE1
COM = 0xFE
_SOS = 0xDA
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: no length field


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) for each segment before the entropy-coded data; payload excludes the length."""
    assert data[:2] == b"\xff\xd8", "not a JPEG (no SOI)"
    segments: list[tuple[int, bytes]] = []
    pos = 2
    while pos < len(data):
        assert data[pos] == 0xFF, f"no marker at offset {pos}"
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            segments.append((marker, b""))
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segments.append((marker, data[pos + 4 : pos + 2 + length]))
        if marker == _SOS:
            break
        pos += 2 + length
    return segments


def legacy_jpeg(image: Image.Image, infotext: str, recipe: dict[str, Any]) -> bytes:
    """A JPEG as the pre-XMP writer made it: EXIF UserComment in APP1, the recipe in a COM segment."""
    out = io.BytesIO()
    image.save(
        out,
        format="JPEG",
        quality=95,
        exif=piexif.dump(
            {"Exif": {piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(infotext, "unicode")}}
        ),
        comment=b"dreamforge-recipe:" + json.dumps(recipe, sort_keys=True).encode(),
    )
    return out.getvalue()
