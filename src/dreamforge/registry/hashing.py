"""Content hashes of checkpoints: SHA-256 of a file, or of a diffusers folder's manifest."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import TypedDict

_CHUNK = 8 * 1024 * 1024


class FileRecord(TypedDict):
    """One installed file of a model, as the registry keeps it."""

    path: str  # relative to the model's folder, `/`-separated
    size: int
    sha256: str


def autov2(sha256: str) -> str:
    """Civitai's AutoV2 / A1111's model hash: the first 10 hex digits of the file's SHA-256."""
    return sha256[:10]


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


def file_records(root: Path) -> list[FileRecord]:
    """Hash every file of a model folder."""
    return [
        FileRecord(path=p.relative_to(root).as_posix(), size=p.stat().st_size, sha256=sha256_file(p))
        for p in folder_files(root)
    ]


def manifest_digest(records: Iterable[FileRecord], *, under: str = "") -> str:
    """A SHA-256 over `relative path + file SHA-256` lines: stable across copies of the folder.

    A diffusers folder has no single checkpoint file, so its "model hash" is this manifest digest.
    `under` limits it to the records below one subfolder (paths are then taken relative to it).
    """
    prefix = f"{under}/" if under else ""
    # Ordered by path components, as sorting the folder's `Path` objects orders them.
    chosen = sorted(
        ((r["path"].removeprefix(prefix), r["sha256"]) for r in records if r["path"].startswith(prefix)),
        key=lambda item: item[0].split("/"),
    )
    return hashlib.sha256("".join(f"{path} {sha}\n" for path, sha in chosen).encode()).hexdigest()


def sha256_folder(root: Path) -> str:
    """The manifest digest of a folder on disk (see `manifest_digest`)."""
    return manifest_digest(file_records(root))
