"""`/v1/jobs`: create, read, cancel, artifacts, logs, progress, the SSE stream and webhook deliveries."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator
from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from dreamforge.accounts.service import Principal
from dreamforge.api.deps import CALLER_SECURITY, BaseUrlDep, PrincipalDep, RuntimeDep, SessionDep, polled_read
from dreamforge.api.errors import (
    ERROR_BODY,
    INVALID,
    NOT_FOUND,
    UNAUTHORIZED,
    UNAVAILABLE,
    ApiError,
    not_found,
)
from dreamforge.api.schemas import (
    ArtifactListResponse,
    JobCreatedResponse,
    JobCreateRequest,
    JobStatusResponse,
    ProgressResponse,
    WebhookDelivery,
    WebhookDeliveryListResponse,
)
from dreamforge.api.sse import FeedsDep, stream_job_events
from dreamforge.api.views import (
    artifact_view,
    created_view,
    delivery_view,
    job_view,
    log_view,
    progress_view,
)
from dreamforge.db.tables import Job
from dreamforge.error_codes import ErrorCode
from dreamforge.events.repository import log_events
from dreamforge.jobs import repository as jobs_repo
from dreamforge.jobs.limits import JobLimits, KeyQuota
from dreamforge.jobs.repository import JobRecord
from dreamforge.jobs.service import cancel_job, submit_job
from dreamforge.runtime import Runtime
from dreamforge.webhooks import repository as webhooks_repo
from dreamforge.webhooks.delivery import redeliver

if TYPE_CHECKING:
    from psycopg import AsyncConnection

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=UNAUTHORIZED)

# OpenAPI links from a created job to what a client does next (stateful contract tests follow them).
# The stream is left out: on a job that never ends it would not end either.
JOB_LINKS = {
    name: {"operationId": operation, "parameters": {"id": "$response.body#/job/id"}}
    for name, operation in (
        ("GetJob", "getJob"),
        ("ListArtifacts", "listArtifacts"),
        ("GetLogs", "getLogs"),
        ("GetProgress", "getProgress"),
        ("CancelJob", "cancelJob"),
    )
}


def _load_job(session: Session, job_id: uuid.UUID, principal: Principal) -> Job:
    """The job, if the caller may see it; another key's job is 404 like a missing one (no existence leak)."""
    job = jobs_repo.get_job(session, job_id)
    if job is None or not principal.can_see(job.api_key_id):
        raise not_found("job", job_id)
    return job


def _job_record(connection: Connection, job_id: uuid.UUID, principal: Principal) -> JobRecord:
    """`_load_job` for the polled read routes: the job as a Core record."""
    job = jobs_repo.job_record(connection, job_id)
    if job is None or not principal.can_see(job.api_key_id):
        raise not_found("job", job_id)
    return job


async def _job_record_async(
    connection: AsyncConnection[Any],
    dialect: Dialect,
    job_id: uuid.UUID,
    principal: Principal,
) -> JobRecord:
    """`_job_record` on the async Postgres pool."""
    job = await jobs_repo.job_record_async(connection, dialect, job_id)
    if job is None or not principal.can_see(job.api_key_id):
        raise not_found("job", job_id)
    return job


def _json(view: BaseModel) -> Response:
    """`view` encoded once by pydantic: FastAPI would validate the returned model against the
    `response_model` again before encoding it, which on a polled route costs as much as the read."""
    return Response(view.model_dump_json(), media_type="application/json")


def _iso_only(value: object) -> object:
    """Refuse a bare number: pydantic would read it as Unix seconds, which the contract does not offer."""
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+(\.\d*)?\s*", value):
        raise ValueError("must be an ISO-8601 date-time such as 2025-09-12T21:00:00Z, not a number")
    return value


def _quota(principal: Principal, runtime: Runtime) -> KeyQuota | None:
    """The caller's quota: its key's own limits, else the service defaults; none without a key."""
    if principal.key_id is None:
        return None
    settings = runtime.settings
    return KeyQuota(
        owner=principal.key_id,
        max_active_jobs=(
            settings.quota_active_jobs if principal.max_active_jobs is None else principal.max_active_jobs
        ),
        max_images_per_day=(
            settings.quota_images_per_day
            if principal.max_images_per_day is None
            else principal.max_images_per_day
        ),
    )


@router.post(
    "",
    status_code=202,
    response_model=JobCreatedResponse,
    operation_id="createJob",
    summary="Create a job (generate)",
    responses={
        202: {"description": "Accepted: the job is queued", "links": JOB_LINKS},
        400: {**ERROR_BODY, "description": "`bad_request`: the body is not JSON (or not UTF-8)"},
        413: {**ERROR_BODY, "description": "`payload_too_large`: the body exceeds DF_MAX_BODY_BYTES"},
        409: {**ERROR_BODY, "description": "Idempotency conflict"},
        422: {
            **ERROR_BODY,
            "description": (
                "Not acceptable as sent: `validation_error`, `unknown_provider`, `model_unavailable`, "
                "`no_model_installed`, `limit_exceeded` (more than DF_MAX_STEPS or "
                "DF_MAX_MEGAPIXELS_PER_JOB allow), `webhook_refused` (a webhook URL that may not be "
                "called), or `parameter_unsupported` (a field the provider's model cannot honour)"
            ),
        },
        429: {
            **ERROR_BODY,
            "description": (
                "`queue_full`: DF_MAX_QUEUED_JOBS jobs are already queued; `quota_exceeded`: the API "
                "key has its most jobs active or made its most images in 24 h. Retry the same request "
                "after the `Retry-After` header's seconds"
            ),
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait before retrying",
                    "schema": {"type": "integer"},
                }
            },
        },
        503: {
            **ERROR_BODY,
            "description": "Not accepted, retry shortly: `broker_unavailable` or `database_unavailable`",
        },
    },
)
def create(
    body: JobCreateRequest,
    session: SessionDep,
    runtime: RuntimeDep,
    principal: PrincipalDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Same key and body return the same job; same key, other body is 409.",
        ),
    ] = None,
) -> JSONResponse:
    """Accept a generate job; it runs asynchronously, follow it with the progress stream."""
    job, created = submit_job(
        session,
        runtime.dispatcher,
        body,
        idempotency_key,
        providers=runtime.providers,
        default_model=runtime.settings.default_model,
        limits=JobLimits(
            max_megapixels_per_job=runtime.settings.max_megapixels_per_job,
            max_steps=runtime.settings.max_steps,
            max_queued_jobs=runtime.settings.max_queued_jobs,
        ),
        owner=principal.key_id,
        quota=_quota(principal, runtime),
        webhook_policy=runtime.webhook_policy,
        remote_providers=runtime.remote_providers,
    )
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(status_code=202, content=created_view(job).model_dump(mode="json"), headers=headers)


@router.get(
    "/{id}",
    response_model=JobStatusResponse,
    operation_id="getJob",
    summary="Get job status",
    responses={**NOT_FOUND, **INVALID, **UNAVAILABLE},
    openapi_extra=CALLER_SECURITY,
)
async def get(id: uuid.UUID, request: Request) -> Response:
    """A job's status, item counts and, when it failed, why."""

    async def query_async(
        connection: AsyncConnection[Any], dialect: Dialect, caller: Principal
    ) -> JobStatusResponse:
        return job_view(await _job_record_async(connection, dialect, id, caller))

    return _json(
        await polled_read(request, lambda c, caller: job_view(_job_record(c, id, caller)), query_async)
    )


@router.post(
    "/{id}/cancel",
    status_code=202,
    response_model=JobStatusResponse,
    operation_id="cancelJob",
    summary="Cancel a job",
    responses={
        **NOT_FOUND,
        409: {**ERROR_BODY, "description": "`job_finished`: the job already succeeded or failed"},
        **INVALID,
        **UNAVAILABLE,
    },
)
def cancel(id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> JobStatusResponse:
    """Stop a job: a queued one never runs, a running one stops within a step; finished items stay."""
    _load_job(session, id, principal)
    job = cancel_job(session, id)
    if job is None:
        raise not_found("job", id)
    return job_view(job)


@router.get(
    "/{id}/artifacts",
    response_model=ArtifactListResponse,
    operation_id="listArtifacts",
    summary="List artifacts for a job",
    responses={**NOT_FOUND, **INVALID, **UNAVAILABLE},
)
def artifacts(
    id: uuid.UUID, session: SessionDep, runtime: RuntimeDep, base_url: BaseUrlDep, principal: PrincipalDep
) -> ArtifactListResponse:
    """The job's stored images, each with a signed URL valid until `expires_at`."""
    _load_job(session, id, principal)
    rows = jobs_repo.list_artifacts(session, id)
    return ArtifactListResponse(artifacts=[artifact_view(r, runtime.store, base_url) for r in rows])


@router.get(
    "/{id}/logs",
    operation_id="getLogs",
    summary="Stream job logs as NDJSON (polling)",
    response_class=Response,
    responses={
        200: {
            "description": "NDJSON stream (one JSON object per line)",
            "content": {
                "application/x-ndjson": {
                    "schema": {"type": "string", "description": "NDJSON lines of LogEvent"}
                }
            },
        },
        **NOT_FOUND,
        **INVALID,
        **UNAVAILABLE,
    },
)
def logs(
    id: uuid.UUID,
    session: SessionDep,
    principal: PrincipalDep,
    tail: Annotated[int | None, Query(ge=1, le=10000, description="Return last N lines")] = None,
    since_ts: Annotated[
        datetime | None,
        BeforeValidator(_iso_only),
        Query(description="Return logs at or after this ISO-8601 date-time"),
    ] = None,
) -> Response:
    """The job's log lines as NDJSON, oldest first; poll with `since_ts` for new ones."""
    _load_job(session, id, principal)
    if since_ts is not None and since_ts.tzinfo is None:
        since_ts = since_ts.replace(tzinfo=UTC)
    rows = log_events(session, id, tail=tail, since=since_ts)
    body = "".join(log_view(r).model_dump_json() + "\n" for r in rows)
    return Response(content=body, media_type="application/x-ndjson")


@router.get(
    "/{id}/progress",
    response_model=ProgressResponse,
    operation_id="getProgress",
    summary="Get aggregated progress for a job",
    responses={**NOT_FOUND, **INVALID, **UNAVAILABLE},
    openapi_extra=CALLER_SECURITY,
)
async def progress(id: uuid.UUID, request: Request) -> Response:
    """Overall and per-item progress, with the stage weights behind them."""

    def query(connection: Connection, caller: Principal) -> ProgressResponse:
        job = _job_record(connection, id, caller)
        return progress_view(job, job.items)

    async def query_async(
        connection: AsyncConnection[Any], dialect: Dialect, caller: Principal
    ) -> ProgressResponse:
        job = await _job_record_async(connection, dialect, id, caller)
        return progress_view(job, job.items)

    return _json(await polled_read(request, query, query_async))


@router.get(
    "/{id}/progress/stream",
    operation_id="streamProgress",
    summary="Server-Sent Events stream of progress and logs",
    response_class=Response,
    responses={
        200: {
            "description": (
                "SSE stream. Events: `status`, `progress`, `log`, `artifact`, `error`, and a final `done` "
                "with the terminal status. Each has an `id`; without `Last-Event-ID` the job's whole "
                "history is replayed first; with it, the stream resumes right after that event. "
                "A `progress` event's data: `item_index`, `stage` (a `stages[].name` of `/progress`: "
                "`denoise`, `upscale`, `refine`, `encode_and_store`), `step` and `steps` within that "
                "stage, `progress` (the item's, 0-1) and `overall` (the job's, 0-1). An `artifact` "
                "event carries the `Artifact` (with its `stage`)."
            ),
            "content": {
                "text/event-stream": {
                    # One Server-Sent Event, as OpenAPI 3.2 describes event streams item by item.
                    "schema": {
                        "type": "object",
                        "description": "One event of the stream (keep-alive comments carry no event)",
                        "required": ["data"],
                        "properties": {
                            "event": {"enum": ["status", "progress", "log", "artifact", "error", "done"]},
                            "id": {"type": "string", "description": "Resume after it with Last-Event-ID"},
                            "data": {
                                "type": "string",
                                "contentMediaType": "application/json",
                                "description": "The event's fields as a JSON object (see above)",
                            },
                        },
                    }
                }
            },
        },
        **NOT_FOUND,
        **INVALID,
        429: {
            **ERROR_BODY,
            "description": "`too_many_streams`: the per-job or per-process stream bound is reached; "
            "retry after `Retry-After` seconds",
        },
        **UNAVAILABLE,
    },
)
async def stream(
    id: uuid.UUID,
    runtime: RuntimeDep,
    feeds: FeedsDep,
    base_url: BaseUrlDep,
    principal: PrincipalDep,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", description="Resume after this event id")
    ] = None,
) -> Response:
    """Live events of a job: full history first (or from `Last-Event-ID`), then live, until `done`."""
    after = 0
    if last_event_id is not None and last_event_id.strip():
        try:
            after = int(last_event_id)
        except ValueError:
            raise ApiError(
                422,
                ErrorCode.validation_error,
                "Last-Event-ID must be an event id from this stream",
                {"field": "Last-Event-ID", "value": last_event_id},
            ) from None
    return await stream_job_events(runtime, feeds, id, after, base_url, principal)


@router.get(
    "/{id}/webhooks",
    response_model=WebhookDeliveryListResponse,
    operation_id="listWebhookDeliveries",
    summary="List a job's webhook deliveries",
    responses={**NOT_FOUND, **INVALID, **UNAVAILABLE},
)
def webhooks(id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> WebhookDeliveryListResponse:
    """Each event sent (or to be sent) to the job's webhook: attempts, last answer, next attempt."""
    _load_job(session, id, principal)
    rows = webhooks_repo.job_deliveries(session, id)
    return WebhookDeliveryListResponse(deliveries=[delivery_view(r) for r in rows])


@router.post(
    "/{id}/webhooks/{delivery_id}/redeliver",
    status_code=202,
    response_model=WebhookDelivery,
    operation_id="redeliverWebhook",
    summary="Send a webhook delivery again",
    responses={**NOT_FOUND, **INVALID, **UNAVAILABLE},
)
def redeliver_webhook(
    id: uuid.UUID, delivery_id: uuid.UUID, session: SessionDep, principal: PrincipalDep
) -> WebhookDelivery:
    """Attempt a delivery again now, with a fresh retry schedule and the same `webhook-id`."""
    _load_job(session, id, principal)
    row = webhooks_repo.get_delivery(session, delivery_id)
    if row is None or row.job_id != id:
        raise not_found("webhook delivery", delivery_id)
    redeliver(session, row)
    session.commit()
    return delivery_view(row)
