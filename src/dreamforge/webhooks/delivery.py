"""One attempt at one delivery, the same in both topologies: claim, sign, send, record.

The database transaction is never held across the network: the attempt is claimed (a short lease, so
a second process does not send it at the same time), the body built and the transaction committed;
then the request is made; then the outcome is recorded. A process that dies mid-attempt leaves the
lease to lapse, and the delivery is attempted again: at least once, with the same `webhook-id`.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session, sessionmaker

from dreamforge.db.session import after_commit, transaction
from dreamforge.db.tables import Job, WebhookDelivery, utcnow
from dreamforge.jobs.lifecycle import log_event
from dreamforge.observability import metrics
from dreamforge.webhooks import repository as repo
from dreamforge.webhooks.outbox import DELIVER
from dreamforge.webhooks.sender import SendResult, WebhookSender
from dreamforge.webhooks.signing import signed_headers, webhook_id

log = logging.getLogger(__name__)

# The body of a delivery, built when it is sent (artifact URLs are signed fresh for each attempt).
PayloadBuilder = Callable[[Session, Job, WebhookDelivery], dict[str, Any]]
# The secret that signs a job's deliveries, from the job's API key (None: made without one).
SecretSource = Callable[[uuid.UUID | None], str]
USER_AGENT = "DreamForge-Webhooks/1"
# Each retry's delay is the schedule's, give or take this fraction, so receivers are not hit in waves.
JITTER = 0.1


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: `delivered`, `retry` (in `delay` seconds) or `failed`."""

    status: str
    delay: float | None = None


def _where(url: str) -> str:
    """The URL as logs show it: scheme, host and path; queries often carry tokens."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _answer(result: SendResult) -> str:
    return f"HTTP {result.status_code}" if result.status_code is not None else str(result.error)


class Deliveries:
    """Makes delivery attempts for one process (an embedded deliverer thread, or a Celery task)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        sender: WebhookSender,
        payload: PayloadBuilder,
        secret: SecretSource,
        schedule: Sequence[float],
        lease_seconds: float,
    ) -> None:
        self.sessions = sessions
        self.sender = sender
        self.payload = payload
        self.secret = secret
        self.schedule = list(schedule)
        self.lease_seconds = lease_seconds

    def attempt(self, delivery_id: uuid.UUID) -> Outcome | None:
        """Make the delivery's due attempt; None when it is not due, not pending, or being made elsewhere."""
        with transaction(self.sessions) as s:
            now = utcnow()
            if not repo.claim_attempt(s, delivery_id, now, self.lease_seconds):
                return None
            delivery = repo.get_delivery(s, delivery_id)
            job = s.get(Job, delivery.job_id) if delivery is not None else None
            if delivery is None or job is None:
                return None
            body = json.dumps(self.payload(s, job, delivery), separators=(",", ":")).encode()
            secret = self.secret(job.api_key_id)
            url, event, job_id = delivery.url, delivery.event, job.id
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **signed_headers(secret, webhook_id(delivery_id), body, utcnow()),
        }
        with metrics.webhook_timer(event):
            result = self.sender.send(url, headers, body)
        return self._record(delivery_id, job_id, event, url, result)

    def _record(
        self, delivery_id: uuid.UUID, job_id: uuid.UUID, event: str, url: str, result: SendResult
    ) -> Outcome | None:
        with transaction(self.sessions) as s:
            delivery = repo.get_delivery(s, delivery_id)
            if delivery is None:
                # The job was deleted (retention) while the request was in flight.
                return None
            now = utcnow()
            delivery.attempts += 1
            delivery.sending_until = None
            delivery.dispatched_at = None
            delivery.last_status_code = result.status_code
            delivery.last_error = None if result.delivered else _answer(result)
            attempt = delivery.attempts - delivery.round_start
            where = f"webhook {event!r} to {_where(url)}"
            if result.delivered:
                outcome = Outcome(repo.DELIVERED)
                delivery.status = repo.DELIVERED
                delivery.delivered_at = now
                delivery.next_attempt_at = None
                message = f"{where} delivered ({_answer(result)}, attempt {attempt})"
                level = "info"
            elif result.retryable and attempt <= len(self.schedule):
                delay = self.schedule[attempt - 1] * random.uniform(1 - JITTER, 1 + JITTER)
                if result.retry_after is not None:
                    delay = max(delay, result.retry_after)
                outcome = Outcome("retry", delay)
                delivery.next_attempt_at = now + timedelta(seconds=delay)
                message = f"{where}: attempt {attempt} got {_answer(result)}; retrying in {delay:.1f}s"
                level = "warning"
            else:
                outcome = Outcome(repo.FAILED)
                delivery.status = repo.FAILED
                delivery.next_attempt_at = None
                why = "not retried" if not result.retryable else f"gave up after {attempt} attempts"
                message = f"{where} failed: {_answer(result)} ({why})"
                level = "error"
            log_event(s, job_id, level, message)
        metrics.WEBHOOK_ATTEMPTS.labels(event, outcome.status).inc()
        return outcome


def redeliver(session: Session, delivery: WebhookDelivery) -> None:
    """Stage a new round of attempts for a delivery, starting now, with the same `webhook-id`."""
    delivery.status = repo.PENDING
    delivery.round_start = delivery.attempts
    delivery.next_attempt_at = utcnow()
    delivery.dispatched_at = None
    delivery.delivered_at = None
    after_commit(session, DELIVER, delivery.id)
    log_event(session, delivery.job_id, "info", f"webhook {delivery.event!r} redelivery requested")
