"""`dreamforge model ...`: install, verify and inspect the models of this machine's registry.

These commands work on the registry directly (`DF_DB_URL`, `DF_MODELS_ROOT`), not through the
API: run them where the models live (in Compose, the worker container with the models volume).
"""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.table import Table

from dreamforge.cli.local import local_registry
from dreamforge.cli.output import (
    OutputFormat,
    OutputOpt,
    QuietOpt,
    VerboseOpt,
    configure_logging,
    emit_json,
    emit_table,
    err,
    fail,
)
from dreamforge.cli.progress import progress_for

if TYPE_CHECKING:
    # Imported when a command runs, so `dreamforge job ...` and `--help` start without SQLAlchemy.
    from sqlalchemy.orm import Session

    from dreamforge.db.tables import Model

app = typer.Typer(
    help="Install (download), verify and list models. Exit codes: 0 ok, 1 failed, 2 usage error.",
    no_args_is_help=True,
)

RefArg = Annotated[
    str,
    typer.Argument(
        help="hf:<owner>/<repo>[@revision][#file.safetensors] or civitai:<version id>",
        show_default=False,
    ),
]
ModelArg = Annotated[str, typer.Argument(help="Model id, name, or the ref it was installed from.")]


# Literal copies of registry.install's kinds: importing it would load SQLAlchemy for `--help`.
class DownloadKind(StrEnum):
    """`model download --kind`: what the file must be; `auto` asks Civitai or the file's tensor names."""

    auto = "auto"
    sdxl_checkpoint = "sdxl-checkpoint"
    upscaler = "upscaler"


class TinyKind(StrEnum):
    """`model create-tiny --kind`: which tiny random-weight model to build."""

    sdxl_checkpoint = "sdxl-checkpoint"
    upscaler = "upscaler"


TINY_SCALES = (2, 4)


def _record(model: Model) -> dict[str, Any]:
    from dreamforge.api.views import model_descriptor

    data = model_descriptor(model).model_dump(mode="json")
    data["path"] = model.path
    return data


def _find(session: Session, key: str) -> Model:
    """A model by id, name, or source reference; exits 1 (2 for a bad ref) when there is none."""
    from dreamforge.registry import repository as models_repo
    from dreamforge.registry.refs import HfRef, RefError, parse_ref, source_of

    try:
        model = models_repo.get_model(session, uuid.UUID(key))
    except ValueError:
        model = None
    if model is None and ":" in key:
        try:
            ref = parse_ref(key)
        except RefError as exc:
            raise fail(str(exc), code=2) from None
        rev = ref.revision if isinstance(ref, HfRef) else None
        candidates = [
            m
            for m in models_repo.find_models_by_source(session, source_of(ref))
            if rev is None or rev == m.version or (m.revision or "").startswith(rev)
        ]
        model = candidates[0] if candidates else None
    if model is None:
        model = models_repo.get_model_by_name(session, key)
    if model is None:
        raise fail(f"no installed model matches {key!r} (see `dreamforge model list`)")
    return model


def _table(models: list[Model]) -> Table:
    # Fits 80 columns: names stay whole (up to 30 characters, longer ones fold), long versions are
    # cut, and SOURCE, the one column rich may shrink, gets what is left (`get` shows it whole).
    # A NAME that could shrink would be the one rich squeezed away first, with long Hub sources.
    table = Table(box=None, pad_edge=False)
    table.add_column("ID", no_wrap=True)
    table.add_column("NAME", overflow="fold", width=min(30, max([4, *(len(m.name) for m in models)])))
    table.add_column("KIND", no_wrap=True)
    table.add_column("VERSION", no_wrap=True, overflow="ellipsis", max_width=12)
    table.add_column("SOURCE", overflow="ellipsis")
    table.add_column("SIZE", justify="right", no_wrap=True)
    table.add_column("ON", no_wrap=True)
    for m in models:
        table.add_row(
            str(m.id)[:8],
            m.name,
            _kind_label(m),
            m.version or "",
            m.source or "",
            f"{m.size_bytes / 1e9:.2f} GB" if m.size_bytes >= 1e8 else f"{m.size_bytes / 1e6:.1f} MB",
            "yes" if m.enabled else "no",
        )
    return table


def _kind_label(model: Model) -> str:
    """`sdxl-checkpoint`, or `upscaler x4` with the upscaler's native scale."""
    scale = (model.extra or {}).get("scale")
    return f"{model.kind} x{scale}" if model.kind == DownloadKind.upscaler and scale else model.kind


@app.command("download")
def download(
    ref: RefArg,
    enable: Annotated[bool, typer.Option("--enable", help="Make it available to jobs right away.")] = False,
    name: Annotated[str | None, typer.Option(help="Registry name (default: from the source).")] = None,
    version: Annotated[str | None, typer.Option(help="Version label (default: from the source).")] = None,
    kind: Annotated[
        DownloadKind,
        typer.Option(
            help="What the model must be; auto: Civitai's model type, or a Hub file's tensor names.",
            case_sensitive=False,
        ),
    ] = DownloadKind.auto,
    output: OutputOpt = OutputFormat.json,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Download a checkpoint or upscaler, verify its SHA-256, and register it (resumes if interrupted).

    A single .safetensors file is an SDXL checkpoint or an upscaler (ESRGAN family, loaded by
    spandrel): Civitai's model type says which, or else the file's tensor names; --kind forces one.

    HF_TOKEN goes only to the Hugging Face endpoint (HF_ENDPOINT), CIVITAI_TOKEN only to Civitai.

    Only .safetensors files are installed; pickle formats (.ckpt, .pt, .pth, .bin) are refused.
    """
    from dreamforge.registry import repository as models_repo
    from dreamforge.registry.download import InvalidModelName, ModelDownloader
    from dreamforge.registry.formats import UnsafeFile
    from dreamforge.registry.install import ModelNameTaken, NotACheckpoint, NotAnUpscaler
    from dreamforge.registry.refs import RefError, parse_ref
    from dreamforge.registry.transfer import DownloadError

    configure_logging(verbose)
    try:
        parsed = parse_ref(ref)
    except RefError as exc:
        raise fail(str(exc), code=2) from None
    started = time.monotonic()
    with (
        local_registry() as (settings, sessions),
        httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0)) as client,
    ):
        try:
            with progress_for(err, quiet=quiet) as progress:
                result = ModelDownloader(settings, sessions, client, progress).download(
                    parsed, name=name, version=version, enable=enable, kind=kind.value
                )
        except InvalidModelName as exc:
            raise fail(str(exc), code=2) from None
        except (DownloadError, UnsafeFile, ModelNameTaken, NotAnUpscaler, NotACheckpoint) as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted; run the same command again to resume the download", code=130) from None
        with sessions() as session:
            model = models_repo.get_model(session, result.model.id)
            assert model is not None
            record = _record(model)
            table = _table([model])
    if not quiet:
        verb = "already installed" if result.already_installed else "installed"
        state = "enabled" if record["enabled"] else "disabled (use --enable or `dreamforge model enable`)"
        what = f"{_kind_label(model)}, " if model.kind == DownloadKind.upscaler else ""
        err.print(
            f"{verb}: {record['name']} ({record['id']}), {what}{state}; "
            f"{result.fetched_bytes:,} bytes fetched in {time.monotonic() - started:.1f}s"
        )
    if output is OutputFormat.table:
        emit_table(table)
        return
    emit_json(
        {
            "status": "already_installed" if result.already_installed else "installed",
            "fetched_bytes": result.fetched_bytes,
            "model": record,
        }
    )


@app.command("verify")
def verify(
    model: ModelArg,
    output: OutputOpt = OutputFormat.json,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Re-hash every file of an installed model; exit 1 and name each file that differs."""
    from dreamforge.registry.verify import verify_model

    configure_logging(verbose)
    with local_registry() as (_, sessions), sessions() as session:
        report = verify_model(_find(session, model))
    if output is OutputFormat.table:
        table = Table(box=None, pad_edge=False)
        table.add_column("FILE", overflow="fold")
        table.add_column("STATUS", no_wrap=True)
        for f in report.files:
            table.add_row(f.path, f.status if f.status == "ok" else f"[red]{f.status}[/red]")
        emit_table(table)
    else:
        emit_json(
            {
                "model_id": report.model_id,
                "name": report.name,
                "ok": report.ok,
                "files": [vars(f) for f in report.files],
            }
        )
    if not report.ok:
        for f in report.files:
            if f.status != "ok":
                detail = f" (expected {f.expected}, found {f.actual})" if f.actual else ""
                err.print(f"[red]{f.status}:[/red] {f.path}{detail}")
        raise typer.Exit(1)
    if not quiet:
        err.print(f"ok: {len(report.files)} files of {report.name} match the registry")


@app.command("list")
def list_models(
    enabled: Annotated[bool, typer.Option("--enabled", help="Only models jobs may use.")] = False,
    output: OutputOpt = OutputFormat.json,
    verbose: VerboseOpt = False,
) -> None:
    """Installed models, newest first (disabled ones too, unless --enabled)."""
    from dreamforge.registry import repository as models_repo

    configure_logging(verbose)
    with local_registry() as (_, sessions), sessions() as session:
        models = list(models_repo.list_models(session, enabled=True if enabled else None))
        if output is OutputFormat.table:
            emit_table(_table(models))
        else:
            emit_json({"models": [_record(m) for m in models]})


@app.command("get")
def get(model: ModelArg, output: OutputOpt = OutputFormat.json, verbose: VerboseOpt = False) -> None:
    """One model: provenance, hashes and files."""
    configure_logging(verbose)
    with local_registry() as (_, sessions), sessions() as session:
        row = _find(session, model)
        if output is OutputFormat.table:
            emit_table(_table([row]))
        else:
            emit_json(_record(row))


def _set_enabled(model: str, enabled: bool, output: OutputFormat) -> None:
    from dreamforge.db.session import transaction
    from dreamforge.registry import repository as models_repo

    with local_registry() as (_, sessions), transaction(sessions) as session:
        row = models_repo.set_model_enabled(session, _find(session, model), enabled)
        if output is OutputFormat.table:
            emit_table(_table([row]))
        else:
            emit_json(_record(row))


@app.command("enable")
def enable_model(model: ModelArg, output: OutputOpt = OutputFormat.json) -> None:
    """Let jobs use a model."""
    _set_enabled(model, True, output)


@app.command("disable")
def disable_model(model: ModelArg, output: OutputOpt = OutputFormat.json) -> None:
    """Stop new jobs from using a model (its files stay installed)."""
    _set_enabled(model, False, output)


@app.command("create-tiny")
def create_tiny(
    name: Annotated[
        str | None,
        typer.Option(
            help="Registry name for the model [default: tiny-sdxl, or tiny-upscaler]", show_default=False
        ),
    ] = None,
    kind: Annotated[
        TinyKind, typer.Option(help="An SDXL checkpoint, or an ESRGAN upscaler.", case_sensitive=False)
    ] = TinyKind.sdxl_checkpoint,
    scale: Annotated[
        int | None,
        typer.Option(help="The upscaler's native scale: 2 or 4 [default: 4]", show_default=False),
    ] = None,
    single_file: Annotated[
        bool,
        typer.Option("--single-file", help="Write one original-layout .safetensors plus a config folder."),
    ] = False,
) -> None:
    """Build a tiny SDXL-architecture model or upscaler with RANDOM weights (images are noise); enable it.

    It loads through the same code path as a real model, for tests and demos without downloads.
    """
    from dreamforge.db.session import transaction
    from dreamforge.registry.install import ModelNameTaken, create_tiny_model, create_tiny_upscaler
    from dreamforge.registry.tiny import TINY_NOTE

    upscaler = kind is TinyKind.upscaler
    if upscaler and single_file:
        raise fail("--single-file applies to checkpoints only; an upscaler is always one file", code=2)
    if not upscaler and scale is not None:
        raise fail("--scale applies to --kind upscaler only", code=2)
    if scale is not None and scale not in TINY_SCALES:
        raise fail(f"--scale must be one of {', '.join(map(str, TINY_SCALES))}, not {scale}", code=2)
    name = name or ("tiny-upscaler" if upscaler else "tiny-sdxl")
    with local_registry() as (settings, sessions):
        try:
            with transaction(sessions) as session:
                if upscaler:
                    model = create_tiny_upscaler(session, settings.models_dir, name, scale=scale or 4)
                else:
                    model = create_tiny_model(session, settings.models_dir, name, single_file=single_file)
                out = {
                    "id": str(model.id),
                    "name": model.name,
                    "kind": model.kind,
                    "scale": (model.extra or {}).get("scale") if upscaler else None,
                    "layout": model.layout,
                    "path": model.path,
                    "sha256": model.sha256,
                    "note": TINY_NOTE,
                }
        except ModelNameTaken as exc:
            raise fail(str(exc)) from None
    emit_json(out)
