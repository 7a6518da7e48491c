"""`dreamforge demo`: start the embedded service, render one image over HTTP, show where it is."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from rich.console import Console

from dreamforge.api.app import create_app
from dreamforge.config import Settings
from dreamforge.db.migrate import upgrade_to_head
from dreamforge.db.session import create_db_engine, make_session_factory, transaction
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
        with httpx.Client(base_url=base, timeout=30) as client:
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
            created = client.post("/jobs", json=body)
            if created.status_code != 202:
                console.print(f"[red]job rejected:[/red] {created.text}")
                return 1
            job_id = created.json()["job"]["id"]
            console.print(
                f"job {job_id} accepted; following {base}/jobs/{job_id}/progress/stream", soft_wrap=True
            )
            status = "unknown"
            with client.stream("GET", f"/jobs/{job_id}/progress/stream", timeout=None) as stream:
                event = ""
                for line in stream.iter_lines():
                    if line.startswith("event:"):
                        event = line.split(":", 1)[1].strip()
                    elif line.startswith("data:") and event in ("progress", "done"):
                        data = json.loads(line.split(":", 1)[1])
                        if event == "progress":
                            console.print(
                                f"  item {data['item_index']}: {data['progress']:.0%}", highlight=False
                            )
                        else:
                            status = data["status"]
                            break
            if status != "succeeded":
                job = client.get(f"/jobs/{job_id}").json()
                console.print(f"[red]job {status}:[/red] {job.get('error')}")
                return 1
            artifact = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"][0]
            image = client.get(artifact["url"])
            image.raise_for_status()
            path = settings.artifacts_dir / artifact["s3_key"]
            meta = read_metadata(image.content)
            console.print(f"embedded infotext:\n{meta.infotext}", highlight=False, soft_wrap=True)
            print(f"image: {Path(path).resolve()}")
            print(f"url:   {artifact['url']}  (valid until {artifact['expires_at']}, while a server runs)")
            return 0
    finally:
        server.should_exit = True
        thread.join(10)
