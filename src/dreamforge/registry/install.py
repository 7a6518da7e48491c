"""Registering checkpoints that are on disk, and building the tiny test model."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from dreamforge.db.tables import Model
from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError
from dreamforge.registry import repository as models_repo
from dreamforge.registry.hashing import FileRecord, file_records, manifest_digest

CAPABILITIES = ["text-to-image"]
# Model kinds (`ModelSummary.kind`): what a model is for.
CHECKPOINT_KIND = "sdxl-checkpoint"
UPSCALER_KIND = "upscaler"
# A model a remote provider serves (registry.remote keeps these rows in step with DF_PROVIDERS).
REMOTE_KIND = "remote-api"


class NotAnUpscaler(DreamForgeError):
    """A file installed as an upscaler holds no super-resolution model spandrel can load."""

    code = ErrorCode.not_an_upscaler
    status = 422


class NotACheckpoint(DreamForgeError):
    """A file installed as an SDXL checkpoint holds no original-layout checkpoint (e.g. an upscaler)."""

    code = ErrorCode.not_a_checkpoint
    status = 422


class ModelNameTaken(DreamForgeError):
    """A model with this name is already registered."""

    code = ErrorCode.model_name_taken
    status = 409


def register_model(
    session: Session,
    *,
    name: str,
    layout: str,
    path: Path,
    config_path: Path | None = None,
    source: str | None = None,
    version: str | None = None,
    revision: str | None = None,
    is_tiny: bool = False,
    enabled: bool = True,
    extra: dict[str, Any] | None = None,
    files: list[FileRecord] | None = None,
    kind: str = CHECKPOINT_KIND,
    capabilities: list[str] | None = None,
) -> Model:
    """Stage the registry row of a model on disk; `files` are hashed here unless given.

    A single-file model's folder is the checkpoint's parent (it also holds `config/`).
    """
    if models_repo.get_model_by_name(session, name) is not None:
        raise ModelNameTaken(f"a model named {name!r} is already registered")
    root = path.parent if layout == "single_file" else path
    records = files if files is not None else file_records(root)
    if layout == "single_file":
        checkpoint = path.relative_to(root).as_posix()
        digest = next(r["sha256"] for r in records if r["path"] == checkpoint)
        size = next(r["size"] for r in records if r["path"] == checkpoint)
    else:
        digest = manifest_digest(records)
        size = sum(r["size"] for r in records)
    model = Model(
        name=name,
        kind=kind,
        version=version,
        layout=layout,
        path=str(path.resolve()),
        config_path=str(config_path.resolve()) if config_path else None,
        source=source,
        revision=revision,
        sha256=digest,
        size_bytes=size,
        installed=True,
        enabled=enabled,
        is_tiny=is_tiny,
        capabilities=list(CAPABILITIES if capabilities is None else capabilities),
        files=list(records),
        extra=extra or {},
    )
    session.add(model)
    session.flush()
    return model


def register_tiny_model(
    session: Session,
    name: str,
    path: Path,
    *,
    layout: str = "diffusers",
    config_path: Path | None = None,
) -> Model:
    """Stage the registry row of a tiny random-weight model already on disk (see `create_tiny_model`)."""
    return register_model(
        session,
        name=name,
        layout=layout,
        path=path,
        config_path=config_path,
        source="tiny:random",
        is_tiny=True,
    )


def create_tiny_model(session: Session, models_dir: Path, name: str, *, single_file: bool = False) -> Model:
    """Build the tiny random-weight SDXL pipeline into `models_dir/name` and register it.

    Its images are noise; it exists so tests and demos run the real loading and rendering path.
    """
    from dreamforge.registry.original_layout import copy_config_tree, write_single_file
    from dreamforge.registry.tiny import build_tiny_pipeline

    if models_repo.get_model_by_name(session, name) is not None:
        raise ModelNameTaken(f"a model named {name!r} is already registered")
    target = models_dir / name
    if target.exists():
        shutil.rmtree(target)
    if not single_file:
        build_tiny_pipeline(target)
        return register_tiny_model(session, name, target)
    target.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_pipeline(Path(tmp) / "pipeline")
        checkpoint = write_single_file(folder, target / f"{name}.safetensors")
        config = copy_config_tree(folder, target / "config")
    return register_tiny_model(session, name, checkpoint, layout="single_file", config_path=config)


def upscaler_record(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The `extra` and `capabilities` of the upscaler at `path`, detected from its weights.

    Raises `NotAnUpscaler` when spandrel recognises no RGB super-resolution model in the file.
    """
    from dreamforge.engines.base import EngineError
    from dreamforge.engines.upscale import describe_upscaler

    try:
        info = describe_upscaler(path)
    except EngineError as exc:
        raise NotAnUpscaler(exc.message) from None
    extra = {
        "scale": info.scale,
        "architecture": info.architecture,
        "architecture_name": info.architecture_name,
        "supports_half": info.supports_half,
        "tags": list(info.tags),
    }
    return extra, ["upscale", f"upscale-x{info.scale}"]


def register_upscaler(
    session: Session,
    *,
    name: str,
    path: Path,
    source: str | None = None,
    version: str | None = None,
    revision: str | None = None,
    is_tiny: bool = False,
    enabled: bool = True,
    extra: dict[str, Any] | None = None,
    files: list[FileRecord] | None = None,
) -> Model:
    """Stage the registry row of a `.safetensors` upscaler, its architecture and scale detected."""
    detected, capabilities = upscaler_record(path)
    return register_model(
        session,
        name=name,
        layout="single_file",
        path=path,
        source=source,
        version=version,
        revision=revision,
        is_tiny=is_tiny,
        enabled=enabled,
        extra={**(extra or {}), **detected},
        files=files,
        kind=UPSCALER_KIND,
        capabilities=capabilities,
    )


def create_tiny_upscaler(session: Session, models_dir: Path, name: str, *, scale: int = 4) -> Model:
    """Build a tiny random-weight ESRGAN upscaler into `models_dir/name` and register it."""
    from dreamforge.registry.tiny import build_tiny_upscaler

    if models_repo.get_model_by_name(session, name) is not None:
        raise ModelNameTaken(f"a model named {name!r} is already registered")
    target = models_dir / name
    if target.exists():
        shutil.rmtree(target)
    checkpoint = build_tiny_upscaler(target / f"{name}.safetensors", scale=scale)
    return register_upscaler(session, name=name, path=checkpoint, source="tiny:random", is_tiny=True)
