"""`dreamforge model download`: resolve a reference, fetch and verify its files, register the model.

Files land in `<models dir>/.downloads/<ref>-<revision>/` first (partial files survive there for
the next run to resume) and the folder is renamed to `<models dir>/<name>/` only when every file
is complete and verified, so a model folder is either whole or absent.

A single `.safetensors` file is an SDXL checkpoint or an upscaler: Civitai's model type says which,
and for a Hub file its tensor names do (read from the JSON header once it is fetched), so the SDXL
config files are fetched for checkpoints only. `--kind` forces one and refuses a file of the other.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from dreamforge.config import Settings
from dreamforge.db.session import transaction
from dreamforge.db.tables import Model
from dreamforge.registry import repository as models_repo
from dreamforge.registry.civitai import UPSCALER_TYPE, CivitaiSource
from dreamforge.registry.formats import UnsafeFile, looks_like_checkpoint, require_safetensors, safe_filename
from dreamforge.registry.hashing import FileRecord
from dreamforge.registry.huggingface import HfSnapshot, HuggingFaceSource
from dreamforge.registry.install import (
    CHECKPOINT_KIND,
    UPSCALER_KIND,
    ModelNameTaken,
    NotACheckpoint,
    NotAnUpscaler,
    register_model,
    register_upscaler,
)
from dreamforge.registry.refs import CivitaiRef, HfRef, ModelRef, source_of
from dreamforge.registry.transfer import DownloadError, ProgressSink, RemoteFile, Transfer

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,99}$")
# Base models whose checkpoints load as SDXL; anything else (SD 1.5, Flux, ...) would fail to load.
_SDXL_BASES = ("SDXL", "Pony", "Illustrious", "NoobAI")
# `download(kind=...)`: detect the kind, or force one of the registry's kinds.
AUTO_KIND = "auto"
KINDS = (AUTO_KIND, CHECKPOINT_KIND, UPSCALER_KIND)
_CHECKPOINT_TENSORS = "model.diffusion_model.*, conditioner.* or first_stage_model.*"


class InvalidModelName(ValueError):
    """A `--name` that cannot name a registry entry and its folder."""


@dataclass
class _Plan:
    """What a reference resolves to: files to fetch, where the model file is, how to record it."""

    source: str  # the reference without its revision: what `verify <ref>` matches
    revision: str
    layout: str
    default_name: str
    version: str | None
    files: list[RemoteFile]
    # A registry kind; None until the fetched single file's tensor names tell (a Hub file, `auto`).
    kind: str | None
    checkpoint: str | None = None  # relative path of a single-file model (checkpoint or upscaler)
    # The kind came from the tensor names (a Hub file): `auto` picked it, or they must match --kind.
    kind_from_header: bool = False
    forced: bool = False  # `--kind` named the kind
    # A diffusers repo: `files` holds only model_index.json, which names the components to fetch.
    pipeline: HfSnapshot | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_config(self) -> bool:
        """A single-file SDXL checkpoint loads against the config repo's files; an upscaler needs none."""
        return self.layout == "single_file" and self.kind == CHECKPOINT_KIND


@dataclass(frozen=True)
class DownloadResult:
    """The registered model, and whether this run fetched it or found it installed."""

    model: Model
    already_installed: bool
    fetched_bytes: int


def validate_name(name: str) -> str:
    """Check a user-given model name (it also names the model's folder)."""
    if not _NAME.match(name):
        raise InvalidModelName(
            f"{name!r} is not a valid model name: use letters, digits, '.', '_' and '-' "
            "(at most 100, starting with a letter or digit)"
        )
    return name


def slug(text: str) -> str:
    """A model name made from a source's own names."""
    cleaned = re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-._")
    return (cleaned or "model")[:100]


class ModelDownloader:
    """Downloads references into the models directory and registers them."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        client: httpx.Client,
        progress: ProgressSink,
        *,
        backoff_initial: float = 1.0,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._progress = progress
        self._transfer = Transfer(
            client, attempts=settings.download_attempts, backoff_initial=backoff_initial
        )
        self._hf = HuggingFaceSource(attempts=settings.download_attempts, backoff_initial=backoff_initial)
        token = settings.civitai_token.get_secret_value() if settings.civitai_token else None
        self._civitai = CivitaiSource(
            client,
            endpoint=settings.civitai_endpoint,
            token=token or None,
            attempts=settings.download_attempts,
            backoff_initial=backoff_initial,
        )

    def download(
        self,
        ref: ModelRef,
        *,
        name: str | None = None,
        version: str | None = None,
        enable: bool = False,
        kind: str = AUTO_KIND,
    ) -> DownloadResult:
        """Install `ref` (or find it installed); `enable` makes it available to jobs.

        `kind` (one of `KINDS`) forces what the model must be; `auto` takes what the source or file says.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
        if name is not None:
            validate_name(name)
        plan = self._plan(ref, None if kind == AUTO_KIND else kind)
        with transaction(self._sessions) as session:
            existing = models_repo.get_model_by_source(session, plan.source, plan.revision)
            if existing is not None:
                if enable and not existing.enabled:
                    existing.enabled = True
                return DownloadResult(existing, already_installed=True, fetched_bytes=0)
            name = name or validate_name(slug(plan.default_name))
            if models_repo.get_model_by_name(session, name) is not None:
                raise ModelNameTaken(
                    f"a model named {name!r} is already registered; pick another with --name"
                )
        target = self._settings.models_dir / name
        if target.exists():
            raise DownloadError(
                f"{target} already exists but no model is registered there; remove it or pick another --name"
            )
        staging = self._settings.models_dir / ".downloads" / f"{slug(plan.source)}-{plan.revision[:12]}"
        with _exclusive(staging):
            fetched, records = self._fetch_all(plan, staging)
            os.replace(staging, target)
        try:
            with transaction(self._sessions) as session:
                model = self._register(session, plan, name, target, version, enable, records)
        except BaseException:
            # Unregistered files would block the next try; put them back where it resumes from.
            os.replace(target, staging)
            raise
        return DownloadResult(model, already_installed=False, fetched_bytes=fetched)

    @staticmethod
    def _register(
        session: Session,
        plan: _Plan,
        name: str,
        target: Path,
        version: str | None,
        enable: bool,
        records: list[FileRecord],
    ) -> Model:
        path = target / plan.checkpoint if plan.checkpoint else target
        if plan.kind != UPSCALER_KIND:
            return register_model(
                session,
                name=name,
                layout=plan.layout,
                path=path,
                config_path=target / "config" if plan.needs_config else None,
                source=plan.source,
                version=version or plan.version,
                revision=plan.revision,
                enabled=enable,
                extra=plan.extra,
                files=records,
            )
        try:
            return register_upscaler(
                session,
                name=name,
                path=path,
                source=plan.source,
                version=version or plan.version,
                revision=plan.revision,
                enabled=enable,
                extra=plan.extra,
                files=records,
            )
        except NotAnUpscaler as exc:
            if not plan.kind_from_header or plan.forced:
                raise
            # Chosen only because it is no checkpoint: say that it is neither, not just "no upscaler".
            raise NotAnUpscaler(
                f"{plan.source} is neither an SDXL checkpoint nor an upscaler: no tensor is named "
                f"{_CHECKPOINT_TENSORS}; {exc.message}"
            ) from None

    def _plan(self, ref: ModelRef, forced: str | None) -> _Plan:
        plan = self._plan_civitai(ref, forced) if isinstance(ref, CivitaiRef) else self._plan_hf(ref, forced)
        plan.forced = forced is not None
        return plan

    def _plan_hf(self, ref: HfRef, forced: str | None) -> _Plan:
        if ref.filename is None and forced == UPSCALER_KIND:
            raise NotAnUpscaler(
                f"{source_of(ref)} is a whole repo, which installs as a diffusers SDXL pipeline; name the "
                f"upscaler's file: hf:{ref.repo_id}#<file>.safetensors"
            )
        snap = self._hf.snapshot(ref.repo_id, ref.revision)
        repo_name = ref.repo_id.split("/", 1)[1]
        extra: dict[str, Any] = {"hf_repo": ref.repo_id, "hf_commit": snap.commit}
        version = ref.revision or snap.commit[:12]
        if ref.filename is not None:
            file = self._hf.single_file(ref, snap)
            extra["hf_file"] = ref.filename
            return _Plan(
                source=source_of(ref),
                revision=snap.commit,
                layout="single_file",
                default_name=f"{repo_name}-{Path(file.path).stem}",
                version=version,
                files=[file],
                kind=forced,
                checkpoint=file.path,
                kind_from_header=True,
                extra=extra,
            )
        # The component list lives in model_index.json, so it is fetched while planning.
        index = self._hf.remote_file(snap, "model_index.json")
        return _Plan(
            source=source_of(ref),
            revision=snap.commit,
            layout="diffusers",
            default_name=repo_name,
            version=version,
            files=[index],
            kind=CHECKPOINT_KIND,
            pipeline=snap,
            extra=extra,
        )

    def _plan_civitai(self, ref: CivitaiRef, forced: str | None) -> _Plan:
        ver = self._civitai.version(ref)
        # Civitai's model type is the kind; an upscaler's base model (often "Other") is no SDXL one.
        kind = UPSCALER_KIND if ver.model_type == UPSCALER_TYPE else CHECKPOINT_KIND
        if forced == UPSCALER_KIND and kind != UPSCALER_KIND:
            raise NotAnUpscaler(
                f"{ref} is a {ver.model_type} on Civitai, not an Upscaler; drop --kind upscaler"
            )
        if forced == CHECKPOINT_KIND and kind != CHECKPOINT_KIND:
            raise NotACheckpoint(
                f"{ref} is an {ver.model_type} on Civitai, not an SDXL checkpoint; "
                "drop --kind sdxl-checkpoint"
            )
        if kind == CHECKPOINT_KIND and ver.base_model and not any(b in ver.base_model for b in _SDXL_BASES):
            raise UnsafeFile(
                f"{ref} is a {ver.base_model} checkpoint; Dream Forge runs SDXL-architecture checkpoints only"
            )
        return _Plan(
            source=source_of(ref),
            revision=str(ver.version_id),
            layout="single_file",
            default_name=f"{ver.model_name}-{ver.version_name}",
            version=ver.version_name,
            files=[ver.file],
            kind=kind,
            checkpoint=ver.file.path,
            extra={
                "civitai_model_id": ver.model_id,
                "civitai_version_id": ver.version_id,
                "civitai_file_id": ver.file_id,
                "base_model": ver.base_model,
            },
        )

    def _fetch_all(self, plan: _Plan, staging: Path) -> tuple[int, list[FileRecord]]:
        files = list(plan.files)
        if plan.pipeline is not None:
            index = self._transfer.fetch(files[0], staging, self._progress)
            pipeline = self._hf.pipeline_files(plan.pipeline, index.path)
            files = [f for f in pipeline if f.path != "model_index.json"]
            fetched, records = index.fetched_bytes, [_record(staging, index.path, index.size, index.sha256)]
        else:
            fetched, records = 0, []
        fetched += self._fetch_files(plan, files, staging, records)
        if plan.checkpoint is not None:
            self._settle_kind(plan, staging / plan.checkpoint)
        # Only now: whether a Hub file needs the SDXL configs depends on what its header said.
        if plan.needs_config:
            config_snap = self._hf.snapshot(self._settings.sdxl_config_repo, None)
            plan.extra["config_repo"] = self._settings.sdxl_config_repo
            plan.extra["config_commit"] = config_snap.commit
            fetched += self._fetch_files(plan, self._hf.config_files(config_snap), staging, records)
        return fetched, records

    def _fetch_files(
        self, plan: _Plan, files: list[RemoteFile], staging: Path, records: list[FileRecord]
    ) -> int:
        fetched = 0
        for remote in files:
            got = self._transfer.fetch(remote, staging, self._progress)
            fetched += got.fetched_bytes
            path = got.path
            if remote.path == plan.checkpoint and got.disposition_name:
                path = self._adopt_server_name(plan, got.path, got.disposition_name)
            records.append(_record(staging, path, got.size, got.sha256))
        return fetched

    @staticmethod
    def _settle_kind(plan: _Plan, path: Path) -> None:
        """Decide (`auto`) or check (`--kind`) a single file's kind by its tensor names.

        Only names are read; whether a non-checkpoint is an upscaler spandrel tells at registration.
        """
        checkpoint = looks_like_checkpoint(path)
        if plan.kind is None:
            plan.kind = CHECKPOINT_KIND if checkpoint else UPSCALER_KIND
        elif plan.kind == UPSCALER_KIND and checkpoint:
            # Refused here so spandrel never loads gigabytes of UNet to find no upscaler in them.
            hint = "; drop --kind upscaler" if plan.forced else ""
            raise NotAnUpscaler(f"{plan.source}: {path.name} is an SDXL checkpoint, not an upscaler{hint}")
        elif plan.kind == CHECKPOINT_KIND and not checkpoint and plan.kind_from_header:
            raise NotACheckpoint(
                f"{plan.source}: {path.name} is not an SDXL checkpoint (no tensor is named "
                f"{_CHECKPOINT_TENSORS}); if it is an upscaler, use --kind upscaler or --kind auto"
            )

    @staticmethod
    def _adopt_server_name(plan: _Plan, path: Path, announced: str) -> Path:
        """Name the checkpoint as the server's Content-Disposition does, made safe."""
        name = safe_filename(announced)
        require_safetensors(name)
        if name != path.name:
            renamed = path.with_name(name)
            os.replace(path, renamed)
            plan.checkpoint = name
            return renamed
        return path


def _record(root: Path, path: Path, size: int, sha256: str) -> FileRecord:
    return FileRecord(path=path.relative_to(root).as_posix(), size=size, sha256=sha256)


@contextmanager
def _exclusive(staging: Path) -> Iterator[None]:
    """Hold a lock on one staging folder so two downloads of the same model never interleave."""
    staging.mkdir(parents=True, exist_ok=True)
    lock_path = staging.with_name(staging.name + ".lock")
    with lock_path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(f"another download of this model is running (lock {lock_path})") from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)
