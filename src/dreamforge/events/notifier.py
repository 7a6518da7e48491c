"""Live fan-out: wakes the SSE streams of a job when new events are committed.

Notifications carry no data, only "job X has news": streams re-read the database, so a lost
or duplicated notification can delay an event by one poll interval but never lose or repeat it.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import defaultdict
from typing import Protocol


class Subscription:
    """One stream's wake-up flag, set from any thread."""

    def __init__(self, notifier: LocalNotifier, job_id: uuid.UUID) -> None:
        self._notifier = notifier
        self.job_id = job_id
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def wake(self) -> None:
        """Mark news; safe to call from worker threads."""
        self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, seconds: float) -> bool:
        """Wait for news, at most `seconds`; True if woken."""
        try:
            await asyncio.wait_for(self._event.wait(), seconds)
        except TimeoutError:
            return False
        finally:
            self._event.clear()
        return True

    def close(self) -> None:
        """Stop receiving wake-ups."""
        self._notifier.unsubscribe(self)


class Notifier(Protocol):
    """Publishes "job has new events" and lets streams wait for it."""

    def publish(self, job_id: uuid.UUID) -> None:
        """Announce committed events of `job_id`."""

    def subscribe(self, job_id: uuid.UUID) -> Subscription:
        """Start receiving announcements for `job_id` (call from the event loop)."""
        ...


class LocalNotifier:
    """In-process fan-out for the embedded topology (worker thread -> SSE streams)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[uuid.UUID, set[Subscription]] = defaultdict(set)

    def publish(self, job_id: uuid.UUID) -> None:
        """Wake every stream of `job_id` in this process."""
        with self._lock:
            subs = list(self._subs.get(job_id, ()))
        for sub in subs:
            try:
                sub.wake()
            except RuntimeError:
                # The stream's event loop is gone (server shutting down): nothing to wake.
                self.unsubscribe(sub)

    def subscribe(self, job_id: uuid.UUID) -> Subscription:
        """Register a stream of `job_id`."""
        sub = Subscription(self, job_id)
        with self._lock:
            self._subs[job_id].add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a stream."""
        with self._lock:
            subs = self._subs.get(sub.job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.job_id]
