"""`dreamforge demo`: start the embedded service, render one image over HTTP, show where it is."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from rich.console import Console

from dreamforge.api.app import create_app
from dreamforge.client import ApiStatusError, ApiUnreachable, DreamForgeClient, JobEvent, JobStatus
from dreamforge.config import Settings
from dreamforge.db.migrate import upgrade_to_head
from dreamforge.db.session import create_db_engine, make_session_factory, transaction
from dreamforge.events.kinds import EventKind
from dreamforge.recipe.embed import read_metadata
from dreamforge.registry import repository as models_repo
from dreamforge.registry.install import create_tiny_model


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _ensure_model(settings: Settings, console: Console) -> None:
    upgrade_to_head(settings.database_url)
    engine = create_db_engine(settings.database_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            if not models_repo.list_models(session, enabled=True):
                console.print(
                    "No model installed: building the tiny random-weight model (its images are noise)."
                )
                create_tiny_model(session, settings.models_dir, "tiny-sdxl")
    finally:
        engine.dispose()


def run_demo(settings: Settings, *, prompt: str, size: int, steps: int, console: Console) -> int:
    """Serve on a free loopback port, create a job, follow its SSE stream, fetch the image; exit code."""
    settings.ensure_dirs()
    _ensure_model(settings, console)
    host = "127.0.0.1"
    port = _free_port(host)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://{host}:{port}/v1"
    try:
        with DreamForgeClient(base, timeout=30) as client:
            deadline = time.monotonic() + 30
            while not server.started:
                if time.monotonic() > deadline or not thread.is_alive():
                    console.print("[red]the server did not start[/red]")
                    return 1
                time.sleep(0.05)
            body = {
                "type": "generate",
                "prompt": prompt,
                "width": size,
                "height": size,
                "steps": steps,
                "seed": 42,
            }
            try:
                job_id = client.create_job(body).job.id
            except ApiStatusError as exc:
                console.print(f"[red]job rejected:[/red] {exc.error.model_dump_json()}")
                return 1
            console.print(
                f"job {job_id} accepted; following {base}/jobs/{job_id}/progress/stream", soft_wrap=True
            )

            def show_progress(event: JobEvent) -> None:
                if event.event == EventKind.progress:
                    data = event.data
                    console.print(f"  item {data['item_index']}: {data['progress']:.0%}", highlight=False)

            try:
                final = client.wait(job_id, on_event=show_progress)
                if final.status is not JobStatus.succeeded:
                    error = final.error.model_dump(mode="json") if final.error else None
                    console.print(f"[red]job {final.status.value}:[/red] {error}")
                    return 1
                artifact = client.list_artifacts(job_id).artifacts[0]
                with tempfile.TemporaryDirectory() as tmp:
                    download = Path(tmp) / "image"
                    client.download_artifact(artifact, download)
                    meta = read_metadata(download.read_bytes())
            except (ApiStatusError, ApiUnreachable) as exc:
                console.print(f"[red]error:[/red] {exc}", highlight=False)
                return 1
            path = settings.artifacts_dir / artifact.s3_key
            # As the API wrote it, not as Python prints a datetime.
            expires_at = artifact.model_dump(mode="json")["expires_at"]
            console.print(f"embedded infotext:\n{meta.infotext}", highlight=False, soft_wrap=True)
            print(f"image: {Path(path).resolve()}")
            print(f"url:   {artifact.url}  (valid until {expires_at}, while a server runs)")
            return 0
    finally:
        server.should_exit = True
        thread.join(10)
