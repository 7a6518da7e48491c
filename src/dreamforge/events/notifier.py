"""Live fan-out: wakes the SSE streams of a job when new events are committed.

Notifications carry no data, only "job X has news": streams re-read the database, so a lost
or duplicated notification can delay an event by one poll interval but never lose or repeat it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import defaultdict
from typing import Protocol

log = logging.getLogger(__name__)


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


class RedisNotifier:
    """Cross-process fan-out over Redis pub/sub: workers publish, every API process listens.

    Each API process runs one listener thread that wakes its local streams. While Redis is down,
    publishes are dropped and streams fall back to polling the database; no event is lost.
    """

    CHANNEL = "dreamforge:job-events"
    # After a failed publish, stay quiet this long so a dead Redis does not slow the worker down.
    BACKOFF_SECONDS = 2.0

    def __init__(self, redis_url: str, *, listen: bool) -> None:
        import redis

        self._redis_url = redis_url
        self._client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        self._local = LocalNotifier()
        self._listen = listen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen_loop, name="dreamforge-events", daemon=True)
        self._quiet_until = 0.0

    def start(self) -> None:
        """Start the listener thread (API processes only)."""
        if self._listen:
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and close connections."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._client.close()

    def publish(self, job_id: uuid.UUID) -> None:
        """Wake local streams now and tell every other process, if Redis answers."""
        import redis

        self._local.publish(job_id)
        if time.monotonic() < self._quiet_until:
            return
        try:
            self._client.publish(self.CHANNEL, str(job_id))
        except redis.RedisError as exc:
            self._quiet_until = time.monotonic() + self.BACKOFF_SECONDS
            log.warning("event notification not sent (%s); streams will poll", exc)

    def subscribe(self, job_id: uuid.UUID) -> Subscription:
        """Register a stream of `job_id` in this process."""
        return self._local.subscribe(job_id)

    def _listen_loop(self) -> None:
        import redis

        delay = 0.5
        while not self._stop.is_set():
            client = redis.Redis.from_url(
                self._redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=10
            )
            try:
                with client.pubsub(ignore_subscribe_messages=True) as pubsub:  # type: ignore[no-untyped-call]
                    pubsub.subscribe(self.CHANNEL)
                    delay = 0.5
                    while not self._stop.is_set():
                        message = pubsub.get_message(timeout=1.0)
                        if message and message.get("type") == "message":
                            self._wake(message["data"])
            except redis.RedisError as exc:
                log.warning("event listener lost Redis (%s); reconnecting in %.1fs", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
            finally:
                client.close()

    def _wake(self, data: bytes | str) -> None:
        try:
            job_id = uuid.UUID(data.decode() if isinstance(data, bytes) else data)
        except ValueError:
            return
        self._local.publish(job_id)
