"""`dreamforge model download`: resolve a reference, fetch and verify its files, register the model.

Files land in `<models dir>/.downloads/<ref>-<revision>/` first (partial files survive there for
the next run to resume) and the folder is renamed to `<models dir>/<name>/` only when every file
is complete and verified, so a model folder is either whole or absent.
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
from dreamforge.registry.civitai import CivitaiSource
from dreamforge.registry.formats import UnsafeFile, require_safetensors, safe_filename
from dreamforge.registry.hashing import FileRecord
from dreamforge.registry.huggingface import HfSnapshot, HuggingFaceSource
from dreamforge.registry.install import ModelNameTaken, register_model
from dreamforge.registry.refs import CivitaiRef, HfRef, ModelRef, source_of
from dreamforge.registry.transfer import DownloadError, ProgressSink, RemoteFile, Transfer

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,99}$")
# Base models whose checkpoints load as SDXL; anything else (SD 1.5, Flux, ...) would fail to load.
_SDXL_BASES = ("SDXL", "Pony", "Illustrious", "NoobAI")


class InvalidModelName(ValueError):
    """A `--name` that cannot name a registry entry and its folder."""


@dataclass
class _Plan:
    """What a reference resolves to: files to fetch, where the checkpoint is, how to record it."""

    source: str  # the reference without its revision: what `verify <ref>` matches
    revision: str
    layout: str
    default_name: str
    version: str | None
    files: list[RemoteFile]
    checkpoint: str | None = None  # relative path of a single-file checkpoint
    needs_config: bool = False
    # A diffusers repo: `files` holds only model_index.json, which names the components to fetch.
    pipeline: HfSnapshot | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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
        self, ref: ModelRef, *, name: str | None = None, version: str | None = None, enable: bool = False
    ) -> DownloadResult:
        """Install `ref` (or find it installed); `enable` makes it available to jobs."""
        if name is not None:
            validate_name(name)
        plan = self._plan(ref)
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
        checkpoint = target / plan.checkpoint if plan.checkpoint else target
        try:
            with transaction(self._sessions) as session:
                model = register_model(
                    session,
                    name=name,
                    layout=plan.layout,
                    path=checkpoint,
                    config_path=target / "config" if plan.needs_config else None,
                    source=plan.source,
                    version=version or plan.version,
                    revision=plan.revision,
                    enabled=enable,
                    extra=plan.extra,
                    files=records,
                )
        except BaseException:
            # Unregistered files would block the next try; put them back where it resumes from.
            os.replace(target, staging)
            raise
        return DownloadResult(model, already_installed=False, fetched_bytes=fetched)

    def _plan(self, ref: ModelRef) -> _Plan:
        if isinstance(ref, CivitaiRef):
            return self._plan_civitai(ref)
        return self._plan_hf(ref)

    def _plan_hf(self, ref: HfRef) -> _Plan:
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
                checkpoint=file.path,
                needs_config=True,
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
            pipeline=snap,
            extra=extra,
        )

    def _plan_civitai(self, ref: CivitaiRef) -> _Plan:
        ver = self._civitai.version(ref)
        if ver.base_model and not any(base in ver.base_model for base in _SDXL_BASES):
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
            checkpoint=ver.file.path,
            needs_config=True,
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
        if plan.needs_config:
            config_snap = self._hf.snapshot(self._settings.sdxl_config_repo, None)
            files += self._hf.config_files(config_snap)
            plan.extra["config_repo"] = self._settings.sdxl_config_repo
            plan.extra["config_commit"] = config_snap.commit
        for remote in files:
            got = self._transfer.fetch(remote, staging, self._progress)
            fetched += got.fetched_bytes
            path = got.path
            if remote.path == plan.checkpoint and got.disposition_name:
                path = self._adopt_server_name(plan, got.path, got.disposition_name)
            records.append(_record(staging, path, got.size, got.sha256))
        return fetched, records

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
