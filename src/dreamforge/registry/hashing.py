"""Content hashes of checkpoints: SHA-256 of a file, or of a diffusers folder's manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in chunks (checkpoints are several GB)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_files(root: Path) -> list[Path]:
    """The files of a model folder that define it, in a stable order (hidden files skipped)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def sha256_folder(root: Path) -> str:
    """A SHA-256 over `relative path + file SHA-256` lines: stable across copies of the folder.

    A diffusers folder has no single checkpoint file, so its "model hash" is this manifest digest.
    """
    lines = [f"{p.relative_to(root).as_posix()} {sha256_file(p)}\n" for p in folder_files(root)]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file in a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in folder_files(path))
