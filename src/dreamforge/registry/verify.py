"""`dreamforge model verify`: re-hash an installed model's files against the registry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dreamforge.db.tables import Model
from dreamforge.registry.hashing import FileRecord, folder_files, sha256_file, sha256_folder

FileStatus = Literal["ok", "modified", "size_changed", "missing", "unexpected"]


@dataclass(frozen=True)
class FileCheck:
    """One file's verdict; `expected`/`actual` are SHA-256s (or sizes for `size_changed`)."""

    path: str
    status: FileStatus
    expected: str | None = None
    actual: str | None = None


@dataclass(frozen=True)
class VerifyReport:
    """Every file of one model, checked."""

    model_id: str
    name: str
    root: str
    files: list[FileCheck]

    @property
    def ok(self) -> bool:
        """True when every recorded file is present and unchanged."""
        return all(f.status == "ok" for f in self.files)


def model_root(model: Model) -> Path:
    """The folder holding all of a model's files (a single file's parent holds its config too)."""
    path = Path(model.path)
    return path.parent if model.layout == "single_file" else path


def verify_model(model: Model) -> VerifyReport:
    """Re-hash every recorded file (and notice files that were added), never trusting sizes alone."""
    root = model_root(model)
    records: list[FileRecord] = list(model.files or [])
    if not records:
        # Registered before files were recorded: the checkpoint digest is all there is to check.
        records = [FileRecord(path=Path(model.path).name, size=model.size_bytes, sha256=model.sha256)]
        if model.layout != "single_file":
            return _verify_legacy_folder(model, root)
    checks = [_check(root, record) for record in records]
    known = {r["path"] for r in records}
    if root.is_dir():
        checks += [
            FileCheck(path=rel, status="unexpected")
            for rel in (p.relative_to(root).as_posix() for p in folder_files(root))
            if rel not in known
        ]
    return VerifyReport(str(model.id), model.name, str(root), checks)


def _check(root: Path, record: FileRecord) -> FileCheck:
    path = root / record["path"]
    if not path.is_file():
        return FileCheck(record["path"], "missing", expected=record["sha256"])
    size = path.stat().st_size
    if size != record["size"]:
        return FileCheck(record["path"], "size_changed", expected=str(record["size"]), actual=str(size))
    actual = sha256_file(path)
    status: FileStatus = "ok" if actual == record["sha256"] else "modified"
    return FileCheck(record["path"], status, expected=record["sha256"], actual=actual)


def _verify_legacy_folder(model: Model, root: Path) -> VerifyReport:
    if not root.is_dir():
        return VerifyReport(str(model.id), model.name, str(root), [FileCheck(".", "missing", model.sha256)])
    actual = sha256_folder(root)
    status: FileStatus = "ok" if actual == model.sha256 else "modified"
    return VerifyReport(str(model.id), model.name, str(root), [FileCheck(".", status, model.sha256, actual)])
