"""`dreamforge`: serve the API, drive it (jobs), try it with a demo, manage local models."""

from __future__ import annotations

import ipaddress
import logging
import os
from typing import Annotated

import typer

from dreamforge.cli import apikeys, gc, jobs, models, webhooks
from dreamforge.cli.output import configure_logging, err
from dreamforge.config import Settings


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        # A host name other than localhost may resolve to anything.
        return False


app = typer.Typer(
    name="dreamforge",
    help=(
        "Dream Forge: an API-first render fabric. Results go to stdout (JSON by default), progress and "
        f"messages to stderr.\n\n{jobs.EXIT_CODES_HELP}"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: Rich's boxed panels cut long flag names at 80 columns.
    rich_markup_mode=None,
)
app.add_typer(jobs.app, name="job")
app.add_typer(models.app, name="model")
app.add_typer(apikeys.app, name="apikey")
app.command("gc")(gc.gc)
app.command("webhook-secret")(webhooks.webhook_secret)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (DF_HOST, default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (DF_PORT, default 8001).")] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth", help="Serve a non-loopback address with DF_AUTH=off (anyone may use it)."
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Debug logging.")] = False,
) -> None:
    """Run the API; embedded, it also runs jobs in-process. Migrates the database first."""
    import uvicorn

    from dreamforge.api.app import create_app

    settings = Settings()
    bind = host or settings.host
    if settings.auth == "off" and not is_loopback(bind) and not insecure_no_auth:
        err.print(
            f"[red]error:[/red] refusing to serve {bind} without authentication: with DF_AUTH=off anyone "
            "who reaches it may read every job and use the GPU. Set DF_AUTH=required and issue keys with "
            "`dreamforge apikey create`, bind 127.0.0.1, or pass --insecure-no-auth if a proxy in front "
            "authenticates."
        )
        raise typer.Exit(2)
    configure_logging(verbose, level=logging.INFO, log_format=settings.log_format)
    # The flags win over DF_HOST/DF_PORT everywhere, also in URLs made outside a request (webhook bodies).
    settings = settings.model_copy(update={"host": bind, "port": port or settings.port})
    uvicorn.run(
        create_app(settings),
        host=bind,
        port=settings.port,
        log_level="debug" if verbose else "info",
        timeout_graceful_shutdown=5,
        # Above our own header bound, so oversized headers get the app's 431 ErrorResponse, not h11's 400.
        h11_max_incomplete_event_size=settings.max_header_bytes * 4,
        # JSON: no uvicorn logging config, so its access and error lines reach the root's JSON handler.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
    )


@app.command()
def worker(
    queue: Annotated[
        str | None, typer.Option(help="Queue to consume (DF_QUEUE, default gpu.default).")
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Debug logging.")] = False,
) -> None:
    """Run one Celery GPU worker (distributed topology): one process, one job at a time, per GPU.

    `--queue webhooks` (DF_WEBHOOK_QUEUE) runs a webhook deliverer instead (DF_WEBHOOK_CONCURRENCY
    threads); `--queue remote.default` (DF_REMOTE_QUEUE) a remote-provider worker (DF_REMOTE_CONCURRENCY
    threads, no torch).

    SIGTERM stops it gracefully: the job in progress is re-queued at its next step.
    """
    settings = Settings()
    if not settings.distributed:
        err.print("[red]error:[/red] DF_REDIS_URL is not set; the embedded topology runs jobs inside 'serve'")
        raise typer.Exit(2)
    delivering = queue is not None and queue == settings.webhook_queue
    remote = queue is not None and queue == settings.remote_queue
    if queue and not (delivering or remote):
        # The worker re-queues interrupted jobs and sweeps with these settings: one queue throughout.
        settings = settings.model_copy(update={"queue": queue})
    configure_logging(verbose, level=logging.INFO, log_format=settings.log_format)
    from dreamforge.worker.celery_app import run_worker

    if delivering or remote:
        # Deliveries and remote jobs wait on the network, not a GPU: threads, so one slow peer holds one
        # slot only. DF_QUEUE stays the GPU queue: sweeps re-send GPU jobs there, never to this queue.
        threads = settings.webhook_concurrency if delivering else settings.remote_concurrency
        pool = ["--pool=threads", f"--concurrency={threads}"]
        consumed = queue
    else:
        # solo: the model stays loaded in this one process, and SIGTERM reaches the running job.
        pool = ["--pool=solo", "--concurrency=1"]
        consumed = settings.queue
    # The exit status tells the supervisor why: 70 after a GPU fault, 75 after DF_WORKER_MAX_JOBS.
    code = run_worker(
        settings,
        [
            "worker",
            *pool,
            f"--queues={consumed}",
            f"--loglevel={'DEBUG' if verbose else 'INFO'}",
            "--without-gossip",
            "--without-mingle",
        ],
    )
    raise typer.Exit(code)


@app.command()
def demo(
    prompt: Annotated[str, typer.Option(help="What to render.")] = "a lighthouse on a cliff at dawn, photo",
    size: Annotated[int, typer.Option(help="Width and height in pixels (multiple of 8).")] = 128,
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 8,
) -> None:
    """Render one image end to end through the HTTP API (creates the tiny model if none is installed)."""
    from dreamforge.cli.demo import run_demo

    configure_logging(False, level=logging.INFO)
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("dreamforge").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # transformers warns once about optional torchvision image processors SDXL never uses.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    raise typer.Exit(run_demo(Settings(), prompt=prompt, size=size, steps=steps, console=err))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
