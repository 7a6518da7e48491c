"""`dreamforge job ...`: create jobs and follow them through the HTTP API, with the Python client.

Results go to stdout (JSON by default, `--output table` for people); progress, notes and errors go
to stderr. Exit codes: 0 ok; 1 the API answered with an error (its `ErrorResponse` as JSON on
stderr); 2 usage error; 3 the API cannot be reached; 4 the job failed or was canceled (commands
that follow a job to its end: `create --wait`, `progress --stream`, `logs --follow`), or, for
`cancel --wait`, it ended other than canceled (it finished first); 130 interrupted.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from dreamforge.api.schemas import (
    Artifact,
    ImageFormat,
    JobStatus,
    JobStatusResponse,
    LogEvent,
    ProgressResponse,
    Scheduler,
    UpscaleMethod,
    WebhookDelivery,
    WebhookEvent,
)
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
    note,
)
from dreamforge.cli.progress import job_view_for, progress_for
from dreamforge.client import ApiStatusError, ApiUnreachable, DreamForgeClient
from dreamforge.client.sync import DEFAULT_API_BASE
from dreamforge.jobs.state import TERMINAL

EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_JOB_FAILED = 4  # also: canceled; for `job cancel --wait`, not canceled
EXIT_INTERRUPTED = 130

# `\b` keeps click from re-wrapping the list.
EXIT_CODES_HELP = """Exit codes:

\b
  0    success
  1    error; an API error prints its ErrorResponse as JSON on stderr
  2    usage error (a bad flag or value)
  3    cannot reach the API (see --api-base, DF_API_BASE)
  4    the job failed or was canceled (job create --wait, progress --stream,
       logs --follow); job cancel --wait: the job did not end canceled
  130  interrupted (Ctrl-C); a job keeps running on the server
"""

app = typer.Typer(
    help=f"Create jobs and follow them through the HTTP API.\n\n{EXIT_CODES_HELP}",
    no_args_is_help=True,
)

ApiBaseOpt = Annotated[
    str,
    typer.Option(
        "--api-base", envvar="DF_API_BASE", show_envvar=True, help="Base URL of the Dream Forge v1 API."
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="DF_API_KEY",
        show_envvar=True,
        show_default=False,
        help="API key, when the service requires one (DF_AUTH=required).",
    ),
]
JobArg = Annotated[uuid.UUID, typer.Argument(help="The job's id (from `job create`).", show_default=False)]

_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(value: str) -> datetime:
    """An ISO-8601 time (`2025-09-12T21:00:00Z`; no zone means UTC) or a duration ago (`90s`, `10m`, `2h`)."""
    text = value.strip()
    if match := _DURATION.fullmatch(text):
        return datetime.now(UTC) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither an ISO-8601 time (2025-09-12T21:00:00Z) nor a duration (10m, 2h)"
        ) from None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


@contextmanager
def _api(api_base: str, verbose: bool, api_key: str | None = None) -> Iterator[DreamForgeClient]:
    """A client for `api_base`; turns its failures into the documented exit codes."""
    configure_logging(verbose)
    try:
        client = DreamForgeClient(api_base, api_key=api_key)
    except ValueError as exc:
        raise fail(str(exc), code=EXIT_USAGE) from None
    try:
        with client:
            yield client
    except ApiStatusError as exc:
        typer.echo(exc.error.model_dump_json(indent=2), err=True)
        raise typer.Exit(EXIT_API_ERROR) from None
    except ApiUnreachable as exc:
        hint = (
            "is `dreamforge serve` running? (--api-base, DF_API_BASE)" if exc.url == client.api_base else ""
        )
        raise fail(
            escape(f"cannot reach {exc.url} ({exc.reason}); {hint}".rstrip("; ")), code=EXIT_UNREACHABLE
        ) from None
    except KeyboardInterrupt:
        raise fail("interrupted (the job itself keeps running)", code=EXIT_INTERRUPTED) from None


def _follow(client: DreamForgeClient, job_id: uuid.UUID, quiet: bool) -> JobStatusResponse:
    """Follow a job to its end with a progress display on stderr."""
    count = client.get_job(job_id).summary.count
    with job_view_for(err, str(job_id), count, quiet=quiet) as view:
        return client.wait(job_id, on_event=view.event)


def _finished_note(status: JobStatusResponse, quiet: bool) -> None:
    if quiet:
        return
    if status.status is JobStatus.succeeded:
        note(
            f"job {status.id} succeeded: {status.summary.completed} image(s); "
            f"get them with `dreamforge job artifacts {status.id} --download DIR`"
        )
    elif status.status is JobStatus.canceled:
        done, count = status.summary.completed, status.summary.count
        kept = f"; get them with `dreamforge job artifacts {status.id} --download DIR`" if done else ""
        note(f"job {status.id} canceled: {done} of {count} image(s) finished before it stopped{kept}")
    elif status.error is not None:
        note(f"job {status.id} failed: [{status.error.code}] {status.error.message}")


def _status_table(status: JobStatusResponse) -> Table:
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column("FIELD", no_wrap=True, style="bold")
    table.add_column("VALUE", overflow="fold")
    rows: list[tuple[str, Any]] = [
        ("id", status.id),
        ("status", status.status.value),
        ("items", f"{status.summary.completed}/{status.summary.count} done"),
        ("attempts", status.attempts),
        ("model", status.model_id or ""),
        ("created", status.created_at.isoformat(timespec="seconds")),
        ("started", status.started_at.isoformat(timespec="seconds") if status.started_at else ""),
        ("finished", status.finished_at.isoformat(timespec="seconds") if status.finished_at else ""),
    ]
    if len(status.steps) > 1:
        rows.append(("steps", ", ".join(f"{step.name} {step.status}" for step in status.steps)))
    if status.cancel_requested_at is not None:
        rows.append(("cancel requested", status.cancel_requested_at.isoformat(timespec="seconds")))
    if status.error is not None:
        rows.append(("error", f"[{status.error.code}] {status.error.message}"))
    for name, value in rows:
        table.add_row(name, escape(str(value)))
    return table


def _artifact_name(artifact: Artifact) -> str:
    """The file an artifact downloads to: `<item>.<fmt>`, `<item>-base.<fmt>` for a base image."""
    suffix = "-base" if artifact.stage == "base" else ""
    return f"{artifact.item_index}{suffix}.{artifact.format.value}"


def _artifacts_table(artifacts: list[Artifact], paths: dict[str, str]) -> Table:
    table = Table(box=None, pad_edge=False)
    table.add_column("ITEM", justify="right", no_wrap=True)
    with_stage = any(a.stage != "final" for a in artifacts)
    if with_stage:
        table.add_column("STAGE", no_wrap=True)
    table.add_column("FORMAT", no_wrap=True)
    table.add_column("SIZE", no_wrap=True)
    table.add_column("SEED", no_wrap=True)
    table.add_column("BYTES", justify="right", no_wrap=True)
    table.add_column("FILE" if paths else "URL EXPIRES", overflow="fold")
    for a in artifacts:
        where = paths.get(_artifact_name(a), "")
        if not paths:
            where = a.expires_at.isoformat(timespec="seconds") if a.expires_at else ""
        table.add_row(
            str(a.item_index),
            *([a.stage] if with_stage else []),
            a.format.value,
            f"{a.width}x{a.height}",
            "" if a.seed is None else str(a.seed),
            "" if a.size_bytes is None else f"{a.size_bytes:,}",
            escape(where),
        )
    return table


def _progress_table(progress: ProgressResponse) -> Table:
    table = Table(box=None, pad_edge=False)
    table.add_column("ITEM", no_wrap=True)
    table.add_column("PROGRESS", justify="right", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("SEED", no_wrap=True)
    table.add_column("STAGE", no_wrap=True)
    overall_status = progress.status.value if progress.status else ""
    table.add_row("overall", f"{progress.progress:.0%}", overall_status, "", "", style="bold")
    for item in progress.items:
        table.add_row(
            str(item.item_index),
            f"{item.progress:.0%}",
            item.status or "",
            "" if item.seed is None else str(item.seed),
            item.stage or "",
        )
    return table


def _log_table(lines: list[LogEvent], *, header: bool = True) -> Table:
    table = Table(box=None, pad_edge=False, show_header=header)
    table.add_column("TIME", no_wrap=True, width=12)
    table.add_column("LEVEL", no_wrap=True, width=7)
    table.add_column("ITEM", no_wrap=True, width=4, justify="right")
    table.add_column("MESSAGE", overflow="fold")
    for line in lines:
        table.add_row(
            line.ts.astimezone(UTC).strftime("%H:%M:%S.%f")[:12],
            line.level,
            "" if line.item_index is None else str(line.item_index),
            escape(line.message),
        )
    return table


def _deliveries_table(deliveries: list[WebhookDelivery]) -> Table:
    # The full id (what `job redeliver` takes) leaves little of 80 columns: the last answer and the
    # next attempt share the last one (UTC); JSON has every field.
    table = Table(box=None, pad_edge=False)
    table.add_column("ID", no_wrap=True)
    table.add_column("EVENT", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("TRIES", justify="right", no_wrap=True)
    table.add_column("ANSWER / NEXT", overflow="fold")
    for d in deliveries:
        notes = [d.last_error or ""]
        if d.status == "pending" and d.next_attempt_at is not None:
            notes.append(f"next {d.next_attempt_at.astimezone(UTC):%m-%d %H:%M:%S}")
        table.add_row(
            str(d.id),
            d.event.value if d.item_index is None else f"{d.event.value}:{d.item_index}",
            d.status,
            str(d.attempts),
            escape("\n".join(n for n in notes if n)),
        )
    return table


@app.command("create")
def create(
    prompt: Annotated[str, typer.Option(help="What to render.", show_default=False)],
    width: Annotated[int, typer.Option(help="Width in pixels, a multiple of 8.", show_default=False)],
    height: Annotated[int, typer.Option(help="Height in pixels, a multiple of 8.", show_default=False)],
    negative_prompt: Annotated[str | None, typer.Option(help="What to steer away from.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (server default 30).")] = None,
    guidance: Annotated[float | None, typer.Option(help="CFG scale (server default 7).")] = None,
    scheduler: Annotated[
        Scheduler | None, typer.Option(help="Sampler (server default dpmpp_2m_karras).")
    ] = None,
    format: Annotated[ImageFormat | None, typer.Option(help="Image format (server default png).")] = None,
    embed_metadata: Annotated[
        bool | None,
        typer.Option(
            "--embed-metadata/--no-embed-metadata", help="Embed the recipe in the image (server default: on)."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of item 0 (default: random).")] = None,
    count: Annotated[int | None, typer.Option(help="Number of images (server default 1).")] = None,
    batch_invariant: Annotated[
        bool,
        typer.Option(
            "--batch-invariant", help="Render each item alone: identical to its --count 1 render, slower."
        ),
    ] = False,
    model_id: Annotated[
        uuid.UUID | None, typer.Option(help="Model to use (default: the server's default model).")
    ] = None,
    provider: Annotated[
        str | None,
        typer.Option(
            help="Who renders it (server default local-sdxl-epicrealism); e.g. openai-images where the "
            "server enables it (DF_PROVIDERS). `dreamforge model list` shows each provider's models."
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Retry-safe key: the same key and parameters return the same job.")
    ] = None,
    upscale: Annotated[
        int | None,
        typer.Option(help="Enlarge each image 2 or 4 times after generating it (the `upscale` step)."),
    ] = None,
    upscale_method: Annotated[
        UpscaleMethod | None,
        typer.Option(help="model: the upscaler alone; refine: then an img2img pass (hires fix)."),
    ] = None,
    denoise: Annotated[
        float | None, typer.Option(help="refine: how much the img2img pass changes, 0-1 (default 0.35).")
    ] = None,
    hires_steps: Annotated[
        int | None, typer.Option(help="refine: the img2img pass's steps (default 20).")
    ] = None,
    upscaler: Annotated[
        uuid.UUID | None, typer.Option(help="Upscaler model (default: the newest enabled one).")
    ] = None,
    keep_base: Annotated[
        bool, typer.Option("--keep-base", help="Also keep each image before upscaling.")
    ] = False,
    webhook: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="POST the job's events here, signed per Standard Webhooks (https; see README, Webhooks).",
        ),
    ] = None,
    webhook_event: Annotated[
        list[WebhookEvent] | None,
        typer.Option(
            metavar="<start|item|completed>",
            help="An event to send to --webhook; repeat for several (server default: completed).",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job to its end; exit 4 if it fails or is canceled.")
    ] = False,
    api_base: ApiBaseOpt = DEFAULT_API_BASE,
    api_key: ApiKeyOpt = None,
    output: OutputOpt = OutputFormat.json,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Submit a text-to-image job.

    Prints `{"job": {"id", "status", ...}}`. Unset options are left to the server's defaults. With
    --wait, follows the job with a progress bar on stderr and prints its final status and artifacts.
    With --upscale, downloads name the base images `<item>-base.<fmt>`. With --webhook, the service
    POSTs the job's events there (`dreamforge job webhooks JOB_ID` lists the deliveries).
    """
    options: dict[str, Any] = {
        "negative_prompt": negative_prompt,
        "steps": steps,
        "guidance": guidance,
        "scheduler": scheduler.value if scheduler else None,
        "format": format.value if format else None,
        "embed_metadata": embed_metadata,
        "seed": seed,
        "count": count,
        "batch_invariant": batch_invariant or None,
        "model_id": str(model_id) if model_id else None,
        "provider": provider,
    }
    body = {"type": "generate", "prompt": prompt, "width": width, "height": height}
    body |= {k: v for k, v in options.items() if v is not None}
    upscale_options: dict[str, Any] = {
        "method": upscale_method.value if upscale_method else None,
        "denoise": denoise,
        "steps": hires_steps,
        "upscaler_model_id": str(upscaler) if upscaler else None,
        "keep_base": keep_base or None,
    }
    given = {k: v for k, v in upscale_options.items() if v is not None}
    if upscale is not None:
        body["upscale"] = {"scale": upscale, **given}
    elif given:
        raise fail(
            "--upscale-method, --denoise, --hires-steps, --upscaler and --keep-base need --upscale", code=2
        )
    if webhook is not None:
        body["webhook"] = webhook
        if webhook_event:
            # Each event once, in the order given: the API refuses a list that repeats one.
            body["webhook_events_filter"] = [e.value for e in dict.fromkeys(webhook_event)]
    elif webhook_event:
        raise fail("--webhook-event needs --webhook", code=2)
    with _api(api_base, verbose, api_key) as client:
        created = client.create_job(body, idempotency_key=idempotency_key)
        job_id = created.job.id
        if created.replayed and not quiet:
            note(f"job {job_id}: the existing job for this Idempotency-Key")
        elif not quiet and not wait:
            note(f"job {job_id} {created.job.status.value}")
        if not wait:
            if output is OutputFormat.table:
                emit_table(_status_table(client.get_job(job_id)))
            else:
                emit_json(created.model_dump(mode="json"))
            return
        final = _follow(client, job_id, quiet)
        artifacts = client.list_artifacts(job_id).artifacts
    _finished_note(final, quiet)
    if output is OutputFormat.table:
        emit_table(_status_table(final))
    else:
        emit_json(
            {
                "job": final.model_dump(mode="json"),
                "artifacts": [a.model_dump(mode="json") for a in artifacts],
            }
        )
    if final.status is not JobStatus.succeeded:
        raise typer.Exit(EXIT_JOB_FAILED)


@app.command("status")
def status(
    job_id: JobArg,
    api_base: ApiBaseOpt = DEFAULT_API_BASE,
    api_key: ApiKeyOpt = None,
    output: OutputOpt = OutputFormat.json,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """A job's status, item counts and, if it failed, why."""
    with _api(api_base, verbose, api_key) as client:
        job = client.get_job(job_id)
    if output is OutputFormat.table:
        emit_table(_status_table(job))
    else:
        emit_json(job.model_dump(mode="json"))


@app.command("logs")
def logs(
    job_id: JobArg,
    tail: Annotated[int | None, typer.Option(min=1, max=10000, help="Only the last N lines.")] = None,
    since: Annotated[
        datetime | None,
        typer.Option(
            parser=parse_since,
            metavar="TS",
            help="Lines at or after an ISO-8601 time (2025-09-12T21:00:00Z) or a duration ago (10m).",
        ),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Keep printing new lines until the job ends; exit 4 if it fails or is canceled.",
        ),
    ] = False,
    api_base: ApiBaseOpt = DEFAULT_API_BASE,
    api_key: ApiKeyOpt = None,
    output: OutputOpt = OutputFormat.json,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """A job's log lines, oldest first.

    JSON output is NDJSON: one LogEvent per line.
    """
    with _api(api_base, verbose, api_key) as client:
        if not follow:
            lines = client.get_logs(job_id, tail=tail, since=since)
            if output is OutputFormat.table:
                emit_table(_log_table(lines))
            else:
                for line in lines:
                    typer.echo(line.model_dump_json())
            return
        first = True
        for line in client.follow_logs(job_id, tail=tail, since=since):
            if output is OutputFormat.table:
                emit_table(_log_table([line], header=first))
                first = False
            else:
                typer.echo(line.model_dump_json())
        final = client.get_job(job_id)
    _finished_note(final, quiet)
    if final.status is not JobStatus.succeeded:
        raise typer.Exit(EXIT_JOB_FAILED)


@app.command("artifacts")
def artifacts(
    job_id: JobArg,
    download: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            metavar="DIR",
            help="Save every artifact here as <item>.<format>; files already there with the right size "
            "are skipped.",
        ),
    ] = None,
    api_base: ApiBaseOpt = DEFAULT_API_BASE,
    api_key: ApiKeyOpt = None,
    output: OutputOpt = OutputFormat.json,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """A job's images and their signed URLs.

    With --download DIR, saves them there (a file appears only once complete and verified).
    """
    records: dict[str, dict[str, Any]] = {}
    paths: dict[str, str] = {}
    with _api(api_base, verbose, api_key) as client:
        listed = client.list_artifacts(job_id).artifacts
        if download is not None:
            download.mkdir(parents=True, exist_ok=True)
            with progress_for(err, quiet=quiet) as progress:
                for artifact in listed:
                    name = _artifact_name(artifact)
                    path = download / name
                    fetched = _fetch(client, job_id, artifact, path, progress)
                    paths[name] = str(path)
                    records[name] = {"path": str(path), "downloaded": fetched}
            if not listed and not quiet:
                note(f"job {job_id} has no artifacts yet")
    if output is OutputFormat.table:
        emit_table(_artifacts_table(listed, paths))
        return
    emit_json(
        {"artifacts": [{**a.model_dump(mode="json"), **records.get(_artifact_name(a), {})} for a in listed]}
    )


def _fetch(
    client: DreamForgeClient, job_id: uuid.UUID, artifact: Artifact, path: Path, progress: Any
) -> bool:
    """Download one artifact unless `path` already holds it; True if bytes were fetched."""
    if path.is_file() and artifact.size_bytes is not None and path.stat().st_size == artifact.size_bytes:
        progress.note(f"skipped {path.name}: already there ({artifact.size_bytes:,} bytes)")
        return False
    progress.start(path.name, artifact.size_bytes, 0)
    try:
        client.download_artifact(artifact, path, on_bytes=progress.advance)
    except ApiStatusError as exc:
        if exc.status != 403:
            raise
        # The signed URL expired while earlier files downloaded: sign a new one and try once more.
        fresh = {a.id: a for a in client.list_artifacts(job_id).artifacts}
        progress.start(path.name, artifact.size_bytes, 0)
        client.download_artifact(fresh[artifact.id], path, on_bytes=progress.advance)
    progress.finish()
    return True


@app.command("progress")
def progress(
    job_id: JobArg,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="Follow live until the job ends (reconnects with Last-Event-ID): bars on stderr, or one "
            "JSON event per line with --output json. Exit 4 if the job fails or is canceled.",
        ),
    ] = False,
    api_base: ApiBaseOpt = DEFAULT_API_BASE,
    api_key: ApiKeyOpt = None,
    output: OutputOpt = OutputFormat.json,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Overall and per-item progress of a job."""
    with _api(api_base, verbose, api_key) as client:
        if not stream:
            now = client.get_progress(job_id)
            if output is OutputFormat.table:
                emit_table(_progress_table(now))
            else:
                emit_json(now.model_dump(mode="json"))
            return
        if output is OutputFormat.json:
            for event in client.stream_events(job_id):
                typer.echo(event.model_dump_json())
            final = client.get_job(job_id)
        else:
            final = _follow(client, job_id, quiet)
            emit_table(_progress_table(client.get_progress(job_id)))
    _finished_note(final, quiet)
    if final.status is not JobStatus.succeeded:
        raise typer.Exit(EXIT_JOB_FAILED)


@app.command("cancel")
def cancel(
    job_id: JobArg,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Follow the job until it stops and print its final status; exit 4 if it ended other than "
            "canceled (it finished first).",
        ),
    ] = False,
    api_base: ApiBaseOpt = DEFAULT_API_BASE,
    api_key: ApiKeyOpt = None,
    output: OutputOpt = OutputFormat.json,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Cancel a job; a running one stops within one denoising step.

    A queued job is canceled at once. Prints the job's status once the server accepted the cancel:
    `canceled`, or still `running` with `cancel_requested_at` set. Images finished before the cancel
    are kept. Cancelling a canceled job again is fine; a job that already succeeded or failed is an
    API error (409 job_finished, exit 1). With --wait, follows the job until it stops and prints its
    final status.
    """
    with _api(api_base, verbose, api_key) as client:
        status = client.cancel_job(job_id)
        if wait and status.status not in TERMINAL:
            status = _follow(client, job_id, quiet)
    if wait and status.status is not JobStatus.canceled:
        # Not silenced by -q: it is why the command exits 4.
        why = f": [{status.error.code}] {status.error.message}" if status.error is not None else ""
        note(f"job {job_id} {status.status.value} before the cancel took effect{why}")
    elif wait:
        _finished_note(status, quiet)
    elif quiet:
        pass
    elif status.status is JobStatus.canceled:
        note(f"job {job_id} canceled")
    else:
        note(
            f"job {job_id}: cancel requested; it stops within one denoising step "
            f"(`dreamforge job cancel {job_id} --wait` follows it there)"
        )
    if output is OutputFormat.table:
        emit_table(_status_table(status))
    else:
        emit_json(status.model_dump(mode="json"))
    if wait and status.status is not JobStatus.canceled:
        raise typer.Exit(EXIT_JOB_FAILED)


DeliveryArg = Annotated[
    uuid.UUID, typer.Argument(help="The delivery's id (from `job webhooks`).", show_default=False)
]


@app.command("webhooks")
def webhooks(
    job_id: JobArg,
    api_base: ApiBaseOpt = DEFAULT_API_BASE,
    api_key: ApiKeyOpt = None,
    output: OutputOpt = OutputFormat.json,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """A job's webhook deliveries, oldest first: status, attempts, last answer, next attempt.

    A `failed` delivery ran out of attempts or was refused by the receiver (a 4xx other than 408/429);
    `dreamforge job redeliver JOB_ID DELIVERY_ID` sends it again.
    """
    with _api(api_base, verbose, api_key) as client:
        listed = client.list_webhook_deliveries(job_id)
    if not listed.deliveries and not quiet:
        note(f"job {job_id} has no webhook deliveries (none asked for, or no event yet)")
    if output is OutputFormat.table:
        emit_table(_deliveries_table(listed.deliveries))
    else:
        emit_json(listed.model_dump(mode="json"))


@app.command("redeliver")
def redeliver(
    job_id: JobArg,
    delivery_id: DeliveryArg,
    api_base: ApiBaseOpt = DEFAULT_API_BASE,
    api_key: ApiKeyOpt = None,
    output: OutputOpt = OutputFormat.json,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Send a webhook delivery again now, with a fresh retry schedule.

    It keeps its `webhook-id`, so a receiver that already has it can drop the repeat. Prints the
    delivery as it is after the request (`pending` until the attempt is made).
    """
    with _api(api_base, verbose, api_key) as client:
        delivery = client.redeliver_webhook(job_id, delivery_id)
    if not quiet:
        note(f"delivery {delivery.id} ({delivery.webhook_id}) queued to {delivery.url}")
    if output is OutputFormat.table:
        emit_table(_deliveries_table([delivery]))
    else:
        emit_json(delivery.model_dump(mode="json"))
