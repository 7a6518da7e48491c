"""Who makes the attempts: a thread pool in the embedded topology, a Celery queue in the distributed one.

Either way deliveries never run on the render loop: a slow, dead or hanging receiver holds one
delivery slot for at most its timeouts, never a render, a cancel or another job's delivery.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dreamforge.db.session import transaction
from dreamforge.db.tables import utcnow
from dreamforge.jobs.periodic import PeriodicTask
from dreamforge.webhooks import repository as repo
from dreamforge.webhooks.delivery import Deliveries, Outcome

log = logging.getLogger(__name__)

# A retry due within this many seconds rides on a delayed broker message; later ones wait for a sweep
# (a broker holds delayed messages unacknowledged, so they must stay short).
SHORT_RETRY_SECONDS = 60.0
# The scheduler's shortest sleep, so a delivery that is due but not yet claimed cannot make it spin.
MIN_WAIT_SECONDS = 0.05


class DeliveryQueue(Protocol):
    """Where a committed delivery is handed to be attempted."""

    def send(self, delivery_id: uuid.UUID, delay: float = 0.0) -> None:
        """Have the delivery attempted after `delay` seconds (best effort: sweeps catch what is lost)."""


class ThreadDeliverer:
    """The embedded topology's deliverer: one scheduler thread and a pool of sending threads.

    The scheduler wakes when a delivery commits or the soonest retry is due (and at least every
    `poll_seconds`), so deliveries a crashed process left behind go out after the next start.
    """

    def __init__(
        self,
        deliveries: Deliveries,
        sessions: sessionmaker[Session],
        concurrency: int,
        poll_seconds: float = 5.0,
    ) -> None:
        self.deliveries = deliveries
        self.sessions = sessions
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: set[uuid.UUID] = set()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="dreamforge-webhook")
        self._thread = threading.Thread(target=self._loop, name="dreamforge-webhooks", daemon=True)

    def start(self) -> None:
        """Start the scheduler (it sends what is pending at once)."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop scheduling; attempts in flight are abandoned to their leases (retried at the next start)."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def send(self, delivery_id: uuid.UUID, delay: float = 0.0) -> None:
        """Wake the scheduler: the delivery is due now, or its time is in the database."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            wait = self.poll_seconds
            try:
                wait = min(wait, self._schedule())
            except SQLAlchemyError as exc:
                log.warning("webhooks: database unreachable (%s); retrying in %.0fs", exc, wait)
            self._wake.wait(wait)
            self._wake.clear()

    def _schedule(self) -> float:
        """Start every due delivery there is a free slot for; returns seconds until the next is due."""
        with self._lock:
            free = self.concurrency - len(self._in_flight)
            busy = set(self._in_flight)
        with self.sessions() as s:
            now = utcnow()
            due = repo.due_deliveries(s, now, free, exclude=busy) if free > 0 else []
            soonest = repo.next_due_at(s)
        for delivery_id in due:
            with self._lock:
                self._in_flight.add(delivery_id)
            future = self._pool.submit(self.deliveries.attempt, delivery_id)
            future.add_done_callback(self._finished(delivery_id))
        if soonest is None:
            return self.poll_seconds
        # Not below a floor: deliveries just handed to the pool are claimed a moment later.
        return max((soonest - utcnow()).total_seconds(), MIN_WAIT_SECONDS)

    def _finished(self, delivery_id: uuid.UUID) -> Callable[[Future[Outcome | None]], None]:
        def done(future: Future[Outcome | None]) -> None:
            with self._lock:
                self._in_flight.discard(delivery_id)
            if not future.cancelled() and future.exception() is not None:
                log.warning("webhook delivery %s: attempt failed (%s)", delivery_id, future.exception())
            self._wake.set()

        return done


class WebhookSweeper(PeriodicTask):
    """Distributed: re-sends due deliveries no broker message carries (a retry's time came, a message
    was lost with the broker, or the process that should have sent it died)."""

    handled = (Exception,)

    def __init__(
        self,
        sessions: sessionmaker[Session],
        queue: DeliveryQueue,
        interval_seconds: float,
        stale_seconds: float,
    ) -> None:
        super().__init__("webhook-sweeper", interval_seconds, first_delay_seconds=min(interval_seconds, 1.0))
        self.sessions = sessions
        self.queue = queue
        self.stale_seconds = stale_seconds

    def run_once(self) -> int:
        """One sweep; returns how many deliveries were sent to the queue."""
        now = utcnow()
        stale = now - timedelta(seconds=self.stale_seconds)
        with self.sessions() as s:
            due = repo.undispatched_due(s, now, stale, limit=500)
        sent = 0
        for delivery_id in due:
            # Every process sweeps; the one whose claim lands sends the message.
            with transaction(self.sessions) as s:
                claimed = repo.claim_dispatch(s, delivery_id, now, stale)
            if claimed:
                self.queue.send(delivery_id)
                sent += 1
        if sent:
            log.info("webhook sweeper: %d due deliveries sent to the queue", sent)
        return sent


def attempt_queued(deliveries: Deliveries, queue: DeliveryQueue, delivery_id: uuid.UUID) -> Outcome | None:
    """A queue message's work: make the due attempt; a retry due soon goes back on the queue delayed
    (a later one is left to the sweeper)."""
    outcome = deliveries.attempt(delivery_id)
    if outcome is not None and outcome.delay is not None and outcome.delay <= SHORT_RETRY_SECONDS:
        queue.send(delivery_id, outcome.delay)
    return outcome
