"""A job's feed reads the database once per announcement, and never misses an event."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from dreamforge.events.feed import FeedHub
from dreamforge.events.notifier import LocalNotifier


@dataclass(frozen=True)
class _Event:
    id: int
    final: bool = False


class _Log:
    """A job's committed events, and how many reads the feed made."""

    def __init__(self, page: int) -> None:
        self.events: list[_Event] = []
        self.reads = 0
        self.page = page

    def load(self, _job: uuid.UUID, after: int) -> list[_Event]:
        self.reads += 1
        return [e for e in self.events if e.id > after][: self.page]


async def _follow(hub: FeedHub[_Event], job: uuid.UUID, seen: list[int]) -> None:
    async with hub.feed(job) as feed:
        async for batch in feed.follow(0):
            seen.extend(e.id for e in batch)


def test_each_announcement_costs_one_read_and_every_event_arrives() -> None:
    async def run() -> tuple[list[int], int]:
        job, log, notifier = uuid.uuid4(), _Log(page=500), LocalNotifier()
        hub: FeedHub[_Event] = FeedHub(log.load, notifier, max_streams=10, max_streams_per_job=10, page=500)
        seen: list[int] = []
        follower = asyncio.create_task(_follow(hub, job, seen))
        await asyncio.sleep(0.05)
        for n in range(1, 21):
            log.events.append(_Event(n, final=n == 20))
            notifier.publish(job)
            await asyncio.sleep(0.01)
        await asyncio.wait_for(follower, 5)
        return seen, log.reads

    seen, reads = asyncio.run(run())
    assert seen == list(range(1, 21))
    # The first read, then one per announcement; there used to be an empty read after each batch.
    assert reads <= 21


def test_a_full_page_is_followed_by_the_next_without_an_announcement() -> None:
    async def run() -> list[int]:
        job, log, notifier = uuid.uuid4(), _Log(page=3), LocalNotifier()
        log.events = [_Event(n, final=n == 8) for n in range(1, 9)]
        hub: FeedHub[_Event] = FeedHub(
            log.load, notifier, max_streams=10, max_streams_per_job=10, poll_seconds=30, page=3
        )
        seen: list[int] = []
        # No announcement at all, and a poll far away: the history arrives page after page.
        await asyncio.wait_for(_follow(hub, job, seen), 5)
        return seen

    assert asyncio.run(run()) == list(range(1, 9))
