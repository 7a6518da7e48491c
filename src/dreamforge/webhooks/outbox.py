"""Writing deliveries: a job's event and the webhook delivery it causes commit in one transaction.

The caller's session stages the row; once the transaction commits, the delivery's id is handed to the
process's sender (`DELIVER` channel of `db.session.on_commits`). Should that hand-off be lost (a crash
right after the commit), the row is still there and the deliverer's sweep sends it.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dreamforge.db.session import after_commit
from dreamforge.db.tables import Job, WebhookDelivery, utcnow

# The after-commit channel of delivery ids to send now.
DELIVER = "webhook"


class WebhookEvent(StrEnum):
    """What a webhook can be told; a job's `webhook_events_filter` picks some."""

    # The job's first attempt started running.
    start = "start"
    # One item's image was stored (its artifacts are in the body).
    item = "item"
    # The job ended: `succeeded`, `failed` or `canceled` (the body's `status` says which).
    completed = "completed"


DEFAULT_EVENTS = (WebhookEvent.completed,)


def webhook_of(params: dict[str, Any]) -> tuple[str, frozenset[str]] | None:
    """The job's webhook URL and the events it wants, from its stored parameters; None without one."""
    url = params.get("webhook")
    if not url:
        return None
    return str(url), frozenset(params.get("webhook_events_filter") or DEFAULT_EVENTS)


def delivery_key(event: WebhookEvent, item_index: int | None) -> str:
    """The delivery's identity within its job: one delivery per event, whatever re-runs."""
    return event.value if item_index is None else f"{event.value}:{item_index}"


def stage_delivery(
    session: Session, job: Job, event: WebhookEvent, item_index: int | None = None
) -> WebhookDelivery | None:
    """Stage the delivery `event` causes, if the job has a webhook that wants it (once per event)."""
    hook = webhook_of(job.params)
    if hook is None or event.value not in hook[1]:
        return None
    key = delivery_key(event, item_index)
    existing = session.scalar(
        select(WebhookDelivery.id).where(WebhookDelivery.job_id == job.id, WebhookDelivery.key == key)
    )
    if existing is not None:
        return None
    delivery = WebhookDelivery(
        id=uuid.uuid4(),
        job_id=job.id,
        key=key,
        event=event.value,
        item_index=item_index,
        url=hook[0],
        status="pending",
        attempts=0,
        round_start=0,
        next_attempt_at=utcnow(),
    )
    session.add(delivery)
    after_commit(session, DELIVER, delivery.id)
    return delivery
