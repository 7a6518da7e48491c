"""What a downloaded file may be called and contain: safe names, safetensors only, no error pages."""

from __future__ import annotations

import json
import re
import struct
from email.message import Message
from pathlib import Path, PurePosixPath
from typing import Any

from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError

PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})
# The safetensors header is JSON of a few hundred KB at most; anything larger is not a checkpoint.
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# Top-level modules of an original-layout (single-file) checkpoint: UNet, text encoders, VAE. No
# upscaler architecture spandrel knows names its tensors like these.
_CHECKPOINT_PREFIXES = ("model.diffusion_model.", "conditioner.", "first_stage_model.")
_UNSAFE_CHARS = re.compile(r"[^\w.\-+() ]")
_MAX_NAME = 200


class UnsafeFile(DreamForgeError):
    """A file the registry refuses to install; the message says why."""

    code = ErrorCode.unsafe_file
    status = 422


def pickle_refusal(name: str) -> str:
    """Why a pickle file (checkpoint or upscaler) is refused, for the error a user sees."""
    return (
        f"refusing {name!r}: pickle files (pickle checkpoints and upscalers alike: .ckpt, .pt, .pth, "
        ".bin) can run arbitrary code when they are loaded, so Dream Forge installs .safetensors files "
        "only; pick a .safetensors (SafeTensor) file of this model instead"
    )


def require_safetensors(name: str) -> None:
    """Raise `UnsafeFile` unless `name` is a `.safetensors` file."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise UnsafeFile(pickle_refusal(name))
    if suffix != ".safetensors":
        raise UnsafeFile(f"refusing {name!r}: only .safetensors files are supported")


def safe_filename(name: str) -> str:
    """One path component from a server, made safe: no directories, no `..`, no hidden files.

    `../../x.safetensors`, `/etc/x.safetensors` and `C:\\x.safetensors` all become `x.safetensors`.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE_CHARS.sub("_", base).strip(" .")
    if not base or base in {".", ".."}:
        raise UnsafeFile(f"the server sent an unusable file name {name!r}")
    if len(base) > _MAX_NAME:
        stem, dot, suffix = base.rpartition(".")
        base = (stem[: _MAX_NAME - len(suffix) - 1] + dot + suffix) if dot else base[:_MAX_NAME]
    return base


def safe_relpath(path: str) -> str:
    """A relative path inside a repo, refused if it could point outside the install folder."""
    parts = path.split("/")
    if path.startswith("/") or "\\" in path or any(p in {"", ".", ".."} for p in parts):
        raise UnsafeFile(f"the server listed an unsafe path {path!r}")
    if any(safe_filename(p) != p for p in parts):
        raise UnsafeFile(f"the server listed a path with unusual characters {path!r}")
    return path


def disposition_filename(header: str | None) -> str | None:
    """The file name a `Content-Disposition` header announces (RFC 6266, incl. `filename*`)."""
    if not header:
        return None
    msg = Message()
    msg["content-disposition"] = header
    name = msg.get_filename()
    return name or None


def looks_like_error_page(name: str, content_type: str | None, head: bytes) -> bool:
    """True when the first bytes of what should be file `name` are an HTML page or a JSON error."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in {"text/html", "application/xhtml+xml"}:
        return True
    if kind == "application/json" and not name.endswith(".json"):
        return True
    start = head.lstrip()[:15].lower()
    if start.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        return True
    if name.lower().endswith(".safetensors") and len(head) >= 8:
        # A safetensors file opens with its header length; text in those 8 bytes reads as an absurd one.
        length: int = struct.unpack("<Q", head[:8])[0]
        return length > _MAX_SAFETENSORS_HEADER
    return False


def error_page_summary(head: bytes) -> str:
    """A short hint of what an error page said (its title or first words)."""
    text = head.decode("utf-8", "replace")
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
    snippet = title.group(1) if title else re.sub(r"<[^>]+>", " ", text)
    return " ".join(snippet.split())[:120]


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of the safetensors file at `path`; `UnsafeFile` unless it is well-formed."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise UnsafeFile(f"{path.name} is too short to be a safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", raw)
        if length > min(_MAX_SAFETENSORS_HEADER, size - 8):
            raise UnsafeFile(f"{path.name} is not a safetensors file (its header length is invalid)")
        try:
            header = json.loads(f.read(length))
        except ValueError:
            raise UnsafeFile(f"{path.name} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise UnsafeFile(f"{path.name} is not a safetensors file (its header is not a JSON object)")
    return header


def check_safetensors_header(path: Path) -> None:
    """Raise `UnsafeFile` unless `path` starts with a well-formed safetensors header."""
    read_safetensors_header(path)


def looks_like_checkpoint(path: Path) -> bool:
    """True when `path`'s tensor names are an original-layout Stable Diffusion checkpoint's (SDXL's).

    Reads the JSON header only, so telling a 6 GB checkpoint from an upscaler costs no tensor load.
    """
    return any(
        key.startswith(_CHECKPOINT_PREFIXES) for key in read_safetensors_header(path) if key != "__metadata__"
    )
