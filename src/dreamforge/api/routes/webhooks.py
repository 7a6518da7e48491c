"""The webhook Dream Forge calls, described for OpenAPI (its `webhooks` section); nothing is served here.

The body is referenced rather than declared as a parameter: a declared body is a request model, and
FastAPI would then split `Artifact` and friends into `-Input`/`-Output` schemas, renaming contract types.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header
from fastapi.openapi.utils import get_openapi

from dreamforge.api.schemas import WebhookPayload

router = APIRouter()

_SIGNATURE = (
    "`v1,<base64 HMAC-SHA256>` of `{webhook-id}.{webhook-timestamp}.{body}` with the secret (Standard "
    "Webhooks; verify with the `standardwebhooks` package)."
)


@router.post(
    "jobEvent",
    operation_id="jobEvent",
    summary="A job event, POSTed to the job's `webhook`",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookPayload"}}},
        }
    },
    responses={
        200: {
            "description": "Any 2xx: delivered. 408, 429 (with `Retry-After`) and 5xx are retried with "
            "backoff; another 4xx or a 3xx ends the delivery as `failed` (redirects are not followed)."
        }
    },
)
def job_event(
    webhook_id: Annotated[
        str, Header(alias="webhook-id", description="Same on every attempt: de-duplicate by it.")
    ],
    webhook_timestamp: Annotated[
        str, Header(alias="webhook-timestamp", description="Unix seconds of this attempt.")
    ],
    webhook_signature: Annotated[str, Header(alias="webhook-signature", description=_SIGNATURE)],
) -> None:
    """Sent for each event in the job's `webhook_events_filter`; answer 2xx quickly, work later."""


def with_webhook_payload(app: FastAPI) -> None:
    """Make `app.openapi()` include the `WebhookPayload` schema the `jobEvent` webhook refers to."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                description=app.description,
                routes=app.routes,
                webhooks=app.webhooks.routes,
                servers=app.servers,
            )
            schema = WebhookPayload.model_json_schema(
                mode="serialization", ref_template="#/components/schemas/{model}"
            )
            components = spec.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in schema.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components["WebhookPayload"] = schema
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
