"""The job event stream over Server-Sent Events (sse-starlette).

Events are read from the database, never from memory, so a late subscriber gets the whole
history and a reconnect with `Last-Event-ID` resumes exactly after that event. Notifications
only say "look again"; a slow poll covers any that were missed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Response
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from dreamforge.api.errors import not_found
from dreamforge.api.views import artifact_view
from dreamforge.db.tables import JobEvent
from dreamforge.events.kinds import EventKind
from dreamforge.events.repository import events_after
from dreamforge.jobs import repository as jobs_repo
from dreamforge.runtime import Runtime

# Safety net for a lost notification; normally streams wake within milliseconds.
POLL_SECONDS = 1.0


def _render(session: Session, runtime: Runtime, base_url: str, event: JobEvent) -> dict[str, Any]:
    data: dict[str, Any] = {"job_id": str(event.job_id), "ts": event.ts.isoformat(), **event.data}
    if event.item_index is not None:
        data["item_index"] = event.item_index
    if event.kind == EventKind.artifact:
        # The stored event names the artifact; its URL is signed now, so it is never stale.
        row = jobs_repo.get_artifact_for_item(session, event.job_id, event.item_index or 0)
        if row is not None:
            data["artifact"] = artifact_view(row, runtime.store, base_url).model_dump(mode="json")
    return data


def _fetch(
    runtime: Runtime, base_url: str, job_id: uuid.UUID, after: int
) -> list[tuple[int, str, dict[str, Any]]]:
    with runtime.sessions() as s:
        return [(r.id, r.kind, _render(s, runtime, base_url, r)) for r in events_after(s, job_id, after)]


def _job_exists(runtime: Runtime, job_id: uuid.UUID) -> bool:
    with runtime.sessions() as s:
        return jobs_repo.get_job(s, job_id) is not None


async def stream_job_events(runtime: Runtime, job_id: uuid.UUID, after: int, base_url: str) -> Response:
    """An SSE response for `job_id` starting after event id `after` (0: from the beginning)."""
    if not await run_in_threadpool(_job_exists, runtime, job_id):
        raise not_found("job", job_id)

    async def events() -> AsyncIterator[ServerSentEvent]:
        subscription = runtime.notifier.subscribe(job_id)
        cursor = after
        try:
            while True:
                batch = await run_in_threadpool(_fetch, runtime, base_url, job_id, cursor)
                for event_id, kind, data in batch:
                    cursor = event_id
                    yield ServerSentEvent(
                        data=json.dumps(data, separators=(",", ":")), event=kind, id=str(event_id)
                    )
                    if kind == EventKind.done:
                        return
                if not batch:
                    await subscription.wait(POLL_SECONDS)
        finally:
            subscription.close()

    return EventSourceResponse(
        events(),
        ping=runtime.settings.sse_ping_seconds,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
