"""The job event stream over Server-Sent Events (sse-starlette).

Events come from the database, so a late subscriber gets the whole history and a reconnect with
`Last-Event-ID` resumes exactly after that event. Each process reads a job's events once and
fans them out to all of that job's streams from memory (`events.feed`), so watchers never slow
the job they watch; the number of streams is bounded per job and per process.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from dreamforge.accounts.service import ANYONE, Principal
from dreamforge.api.errors import not_found
from dreamforge.api.views import artifact_view
from dreamforge.db import tables
from dreamforge.events.feed import FeedHub, Loader
from dreamforge.events.kinds import EventKind
from dreamforge.events.repository import EVENTS_PAGE, events_after
from dreamforge.jobs import repository as jobs_repo
from dreamforge.runtime import Runtime

# Safety net for a lost notification; normally streams wake within milliseconds.
POLL_SECONDS = 1.0
# An artifact URL signed for one stream is reused by the others for this long, at most.
RESIGN_SECONDS = 1.0


@dataclass(frozen=True)
class StreamEvent:
    """An event as every stream of the job sends it; only artifact URLs are signed per stream."""

    id: int
    kind: str
    data: dict[str, Any]
    # The SSE frame, encoded once for all streams (None for artifact events, whose URL is per stream).
    frame: bytes | None
    artifact: tables.Artifact | None = None
    # Artifact frames signed for each base URL, and when: the streams of one batch share one
    # signature (signing per stream made an artifact batch cost twice any other in a crowd).
    _signed: dict[str, tuple[float, bytes]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def final(self) -> bool:
        """The `done` event ends every stream of the job."""
        return self.kind == EventKind.done

    def render(self, runtime: Runtime, base_url: str) -> bytes:
        """The SSE frame for a stream whose clients reach the API at `base_url`."""
        if self.frame is not None:
            return self.frame
        now = time.monotonic()
        signed = self._signed.get(base_url)
        if signed is not None and now - signed[0] < RESIGN_SECONDS:
            return signed[1]
        data = dict(self.data)
        if self.artifact is not None:
            # Signed now: a subscriber more than RESIGN_SECONDS late never gets an aged URL.
            data["artifact"] = artifact_view(self.artifact, runtime.store, base_url).model_dump(mode="json")
        frame = _frame(self.id, self.kind, data)
        self._signed[base_url] = (now, frame)
        return frame


def _frame(event_id: int, kind: str, data: dict[str, Any]) -> bytes:
    return ServerSentEvent(
        data=json.dumps(data, separators=(",", ":")), event=kind, id=str(event_id)
    ).encode()


def event_loader(runtime: Runtime) -> Loader[StreamEvent]:
    """Reads a job's new events (and the artifacts they announce) for the feeds: one query per batch."""

    def load(job_id: uuid.UUID, after: int) -> Sequence[StreamEvent]:
        with runtime.sessions() as s:
            out = []
            for row in events_after(s, job_id, after):
                data: dict[str, Any] = {"job_id": str(row.job_id), "ts": row.ts.isoformat()}
                # Stored data may hold nulls (a succeeded job's `done` has `error: null`); the wire
                # leaves an unset field out instead.
                data.update((k, v) for k, v in row.data.items() if v is not None)
                if row.item_index is not None:
                    data["item_index"] = row.item_index
                if row.kind == EventKind.artifact:
                    artifact = jobs_repo.get_artifact(s, uuid.UUID(row.data["artifact_id"]))
                    out.append(StreamEvent(row.id, row.kind, data, None, artifact))
                else:
                    out.append(StreamEvent(row.id, row.kind, data, _frame(row.id, row.kind, data)))
            return out

    return load


def get_feeds(request: Request) -> FeedHub[StreamEvent]:
    """This process's feeds, made on first use (they live on the API's event loop)."""
    feeds: FeedHub[StreamEvent] | None = getattr(request.app.state, "feeds", None)
    if feeds is None:
        runtime: Runtime = request.app.state.runtime
        settings = runtime.settings
        feeds = FeedHub(
            event_loader(runtime),
            runtime.notifier,
            max_streams=settings.sse_max_streams,
            max_streams_per_job=settings.sse_max_streams_per_job,
            max_streams_per_key=settings.sse_max_streams_per_key,
            poll_seconds=POLL_SECONDS,
            page=EVENTS_PAGE,
        )
        request.app.state.feeds = feeds
    return feeds


FeedsDep = Annotated[FeedHub[StreamEvent], Depends(get_feeds)]


def _job_visible(runtime: Runtime, job_id: uuid.UUID, principal: Principal) -> bool:
    with runtime.sessions() as s:
        job = jobs_repo.get_job(s, job_id)
        return job is not None and principal.can_see(job.api_key_id)


async def stream_job_events(
    runtime: Runtime,
    feeds: FeedHub[StreamEvent],
    job_id: uuid.UUID,
    after: int,
    base_url: str,
    principal: Principal = ANYONE,
) -> Response:
    """An SSE response for `job_id` starting after event id `after` (0: from the beginning).

    Another key's job is 404, as one that does not exist: its existence is not the caller's business.
    """
    if not await run_in_threadpool(_job_visible, runtime, job_id, principal):
        raise not_found("job", job_id)
    # Checked here so a refusal is an ErrorResponse; the stream is counted once it starts, so a
    # burst of simultaneous requests may pass the bound by the few still starting.
    feeds.check_capacity(job_id, principal.key_id)

    async def events() -> AsyncIterator[bytes]:
        async with feeds.feed(job_id, principal.key_id) as feed:
            # Frames are encoded once per process; a stream sends what has arrived in one write.
            async for batch in feed.follow(after):
                yield b"".join(event.render(runtime, base_url) for event in batch)

    return EventSourceResponse(
        events(),
        ping=runtime.settings.sse_ping_seconds,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
