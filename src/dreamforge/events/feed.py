"""One read per event per process: a job's events are loaded once and fanned out to its streams.

Every SSE stream of a job in this process follows one `JobFeed`. The feed reads new events from
the database once per wake-up (the notifier says "look again"; a slow poll covers a lost
notification) and keeps them in memory while any stream is open, so a thousand watchers cost one
query per batch of events, not a thousand. The database stays the source of truth: a feed starts
from it, so replay and `Last-Event-ID` work as before, in any process.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Generic, Protocol, TypeVar

from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError
from dreamforge.events.notifier import Notifier

log = logging.getLogger(__name__)

# After a batch, the feed lets new events gather for this long per open stream (capped), so a
# crowd of watchers gets fewer, larger writes and leaves the CPU to the job; one watcher waits 2 ms.
COALESCE_SECONDS_PER_STREAM = 0.002
COALESCE_MAX_SECONDS = 0.25
# A stream refused for capacity is told to come back after this many seconds.
RETRY_AFTER_SECONDS = 5


class FeedItem(Protocol):
    """What a feed needs to know of an event: its id, and whether it is the job's last."""

    @property
    def id(self) -> int: ...

    @property
    def final(self) -> bool: ...


T = TypeVar("T", bound=FeedItem)
# Reads a job's events with ids above the cursor, oldest first (called in a worker thread).
Loader = Callable[[uuid.UUID, int], Sequence[T]]


class TooManyStreams(DreamForgeError):
    """This process already serves as many streams as it allows (for the job, or in all)."""

    code = ErrorCode.too_many_streams
    status = 429

    def __init__(self, limit: str, maximum: int) -> None:
        super().__init__(
            f"{maximum} progress streams are open ({limit}); retry in {RETRY_AFTER_SECONDS} s, "
            "or poll GET /jobs/{id}/progress",
            details={"limit": limit, "max": maximum, "retry_after_seconds": RETRY_AFTER_SECONDS},
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )


class JobFeed(Generic[T]):
    """One job's events in this process, read once and shared by every stream of the job."""

    def __init__(
        self, job_id: uuid.UUID, load: Loader[T], notifier: Notifier, poll_seconds: float, page: int
    ) -> None:
        self.job_id = job_id
        self.streams = 0
        self._load = load
        self._notifier = notifier
        self._poll = poll_seconds
        self._page = page
        self._items: list[T] = []
        self._ids: list[int] = []
        self._finished = False
        self._changed = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin reading (once); the reader stops when the job's last event is in or the feed closes."""
        if self._pump is None or (self._pump.done() and not self._finished):
            self._pump = asyncio.create_task(self._read(), name=f"feed-{self.job_id}")

    def close(self) -> None:
        """Stop reading: no stream follows the job any more."""
        if self._pump is not None:
            self._pump.cancel()

    async def _read(self) -> None:
        subscription = self._notifier.subscribe(self.job_id)
        try:
            while not self._finished:
                cursor = self._ids[-1] if self._ids else 0
                try:
                    # A thread: the loader blocks on the database; events/ stays free of the web framework.
                    batch = await asyncio.to_thread(self._load, self.job_id, cursor)
                except Exception as exc:
                    # The database is away: streams wait, and the next poll tries again.
                    log.warning("job %s: events not read (%s); retrying", self.job_id, exc)
                    await asyncio.sleep(self._poll)
                    continue
                if batch:
                    self._items.extend(batch)
                    self._ids.extend(item.id for item in batch)
                    self._finished = batch[-1].final
                    # Wake every waiting stream: they all read the same list.
                    changed, self._changed = self._changed, asyncio.Event()
                    changed.set()
                    if self._finished:
                        break
                    # Let the next events gather: each stream then sends them in one write, which
                    # keeps a crowd of watchers from taking the CPU the job needs.
                    await asyncio.sleep(min(COALESCE_MAX_SECONDS, COALESCE_SECONDS_PER_STREAM * self.streams))
                    if len(batch) >= self._page:
                        continue  # a full page: more may wait behind it, unannounced
                # A wake-up flag set since the last wait stays set: events committed after the read
                # above announced themselves, so the next read follows a wake-up, not a guess (an
                # empty read after every batch was half of this feed's queries).
                await subscription.wait(self._poll)
        finally:
            subscription.close()

    async def follow(self, after: int) -> AsyncIterator[list[T]]:
        """The job's events with ids above `after`, in batches of what has arrived, up to the last.

        A stream that fell behind gets everything it missed in one batch (one write, not many).
        """
        position = bisect.bisect_right(self._ids, after)
        while True:
            # A feed still loading the history may hold events the stream already has.
            batch = [item for item in self._items[position:] if item.id > after]
            position = len(self._items)
            for index, item in enumerate(batch):
                if item.final:
                    yield batch[: index + 1]
                    return
            if batch:
                yield batch
            if position == len(self._items):
                await self._changed.wait()


class FeedHub(Generic[T]):
    """The feeds of one process, with bounds on how many streams it serves (per job and in all)."""

    def __init__(
        self,
        load: Loader[T],
        notifier: Notifier,
        *,
        max_streams: int,
        max_streams_per_job: int,
        max_streams_per_key: int = 0,
        poll_seconds: float = 1.0,
        page: int = 500,
    ) -> None:
        self._load = load
        # The most events one call of `load` returns.
        self._page = page
        self._notifier = notifier
        self._poll = poll_seconds
        self.max_streams = max_streams
        self.max_streams_per_job = max_streams_per_job
        # 0: no bound per API key (DF_AUTH=off has no keys to count).
        self.max_streams_per_key = max_streams_per_key
        self.streams = 0
        self._feeds: dict[uuid.UUID, JobFeed[T]] = {}
        self._per_key: Counter[uuid.UUID] = Counter()

    def check_capacity(self, job_id: uuid.UUID, key: uuid.UUID | None = None) -> None:
        """Raise `TooManyStreams` when one more stream of `job_id` (for API key `key`) would pass a bound."""
        if self.streams >= self.max_streams:
            raise TooManyStreams("DF_SSE_MAX_STREAMS", self.max_streams)
        feed = self._feeds.get(job_id)
        if feed is not None and feed.streams >= self.max_streams_per_job:
            raise TooManyStreams("DF_SSE_MAX_STREAMS_PER_JOB", self.max_streams_per_job)
        if key is not None and self.max_streams_per_key and self._per_key[key] >= self.max_streams_per_key:
            raise TooManyStreams("DF_SSE_MAX_STREAMS_PER_KEY", self.max_streams_per_key)

    @asynccontextmanager
    async def feed(self, job_id: uuid.UUID, key: uuid.UUID | None = None) -> AsyncIterator[JobFeed[T]]:
        """The job's feed for one stream (of API key `key`), counted while the stream is open."""
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = JobFeed(job_id, self._load, self._notifier, self._poll, self._page)
        feed.streams += 1
        self.streams += 1
        if key is not None:
            self._per_key[key] += 1
        feed.start()
        try:
            yield feed
        finally:
            feed.streams -= 1
            self.streams -= 1
            if key is not None:
                self._per_key[key] -= 1
                if not self._per_key[key]:
                    del self._per_key[key]
            if feed.streams == 0:
                feed.close()
                del self._feeds[job_id]
