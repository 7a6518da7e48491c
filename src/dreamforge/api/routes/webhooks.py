"""The webhook Dream Forge calls, described for OpenAPI (its `webhooks` section); nothing is served here."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header

from dreamforge.api.schemas import WebhookPayload

router = APIRouter()


@router.post(
    "jobEvent",
    operation_id="jobEvent",
    summary="A job event, POSTed to the job's `webhook`",
    responses={
        200: {
            "description": "Any 2xx: delivered. 408, 429 (with `Retry-After`) and 5xx are retried "
            "with backoff; another 4xx or a 3xx ends the delivery as `failed` (redirects are not followed)."
        }
    },
)
def job_event(
    body: Annotated[WebhookPayload, Body()],
    webhook_id: Annotated[
        str, Header(alias="webhook-id", description="Same on every attempt: de-duplicate by it.")
    ],
    webhook_timestamp: Annotated[
        str, Header(alias="webhook-timestamp", description="Unix seconds of this attempt.")
    ],
    webhook_signature: Annotated[
        str,
        Header(
            alias="webhook-signature",
            description="`v1,<base64 HMAC-SHA256>` of `{webhook-id}.{webhook-timestamp}.{body}` with the "
            "secret (Standard Webhooks; verify with the `standardwebhooks` package).",
        ),
    ],
) -> None:
    """Sent for each event in the job's `webhook_events_filter`; answer 2xx quickly, work later."""
