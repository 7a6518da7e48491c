"""Turn rows into the contract's response models."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from pydantic import BaseModel

from dreamforge.api.schemas import (
    Artifact,
    JobCounts,
    JobCreatedResponse,
    JobCreateRequest,
    JobError,
    JobStatus,
    JobStatusResponse,
    JobStep,
    JobSummaryRef,
    LogEvent,
    ModelDescriptor,
    ModelFile,
    ModelSummary,
    ProgressItem,
    ProgressResponse,
    Stage,
    UpscaleRequest,
    WebhookDelivery,
    WebhookPayload,
)
from dreamforge.db import tables
from dreamforge.jobs.repository import ItemRecord, JobRecord
from dreamforge.jobs.stages import stage_plan, step_statuses
from dreamforge.registry.hashing import autov2
from dreamforge.registry.tiny import TINY_NOTE
from dreamforge.storage.base import ArtifactStore
from dreamforge.webhooks.outbox import WebhookEvent, webhook_of
from dreamforge.webhooks.signing import webhook_id

# The request fields an SDXL checkpoint's jobs tune, advertised as the model's `parameters_schema`.
SDXL_PARAMETERS = ("width", "height", "steps", "guidance", "scheduler")


def created_view(job: tables.Job) -> JobCreatedResponse:
    """The answer to `POST /jobs`: the job as accepted."""
    return JobCreatedResponse(
        job=JobSummaryRef(id=job.id, status=job.status, type="generate", created_at=job.created_at)
    )


def log_view(event: tables.JobEvent) -> LogEvent:
    """A persisted `log` event as one line of `/logs` (the SSE `log` event carries the same fields)."""
    return LogEvent(
        id=event.id,
        ts=event.ts,
        level=event.data.get("level", "info"),
        message=event.data.get("message", ""),
        item_index=event.item_index,
        job_id=event.job_id,
    )


def job_view(job: tables.Job | JobRecord) -> JobStatusResponse:
    """A job's status document."""
    error = JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None
    return JobStatusResponse(
        id=job.id,
        type=job.type,
        status=JobStatus(job.status),
        created_at=job.created_at,
        updated_at=job.updated_at,
        steps=[
            JobStep(name=name, status=status)
            for name, status in step_statuses(JobStatus(job.status), job.params, job.items)
        ],
        summary=JobCounts(count=job.count, completed=job.completed),
        started_at=job.started_at,
        finished_at=job.finished_at,
        model_id=job.model_id,
        attempts=job.attempts,
        error=error,
        cancel_requested_at=job.cancel_requested_at,
        **_webhook_fields(job),
    )


def _webhook_fields(job: tables.Job | JobRecord) -> dict[str, Any]:
    hook = webhook_of(job.params)
    if hook is None:
        return {}
    events = [e for e in WebhookEvent if e.value in hook[1]]
    return {"webhook": hook[0], "webhook_events_filter": events}


def delivery_view(row: tables.WebhookDelivery) -> WebhookDelivery:
    """A webhook delivery as `GET /jobs/{id}/webhooks` lists it."""
    return WebhookDelivery(
        id=row.id,
        webhook_id=webhook_id(row.id),
        event=WebhookEvent(row.event),
        item_index=row.item_index,
        url=row.url,
        status="delivered"
        if row.status == "delivered"
        else "failed"
        if row.status == "failed"
        else "pending",
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
        delivered_at=row.delivered_at,
        created_at=row.created_at,
    )


def webhook_payload(
    job: tables.Job,
    delivery: tables.WebhookDelivery,
    artifacts: Sequence[tables.Artifact],
    store: ArtifactStore,
    base_url: str,
) -> WebhookPayload:
    """The body of a delivery: the job now, the event, and the artifacts it concerns with fresh URLs."""
    event = WebhookEvent(delivery.event)
    shown: list[Artifact] | None = None
    if event is WebhookEvent.completed:
        shown = [artifact_view(a, store, base_url) for a in artifacts]
    elif event is WebhookEvent.item:
        shown = [artifact_view(a, store, base_url) for a in artifacts if a.item_index == delivery.item_index]
    return WebhookPayload(
        **job_view(job).model_dump(), event=event, item_index=delivery.item_index, artifacts=shown
    )


def artifact_view(row: tables.Artifact, store: ArtifactStore, base_url: str) -> Artifact:
    """An artifact with a freshly signed URL."""
    signed = store.signed_url(row.s3_key, base_url)
    return Artifact(
        id=row.id,
        format=row.format,
        width=row.width,
        height=row.height,
        seed=row.seed,
        item_index=row.item_index,
        stage="base" if row.stage == "base" else "final",
        s3_key=row.s3_key,
        url=signed.url,
        expires_at=signed.expires_at,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        content_type=row.content_type,
    )


def progress_view(
    job: tables.Job | JobRecord, items: Sequence[tables.JobItem | ItemRecord]
) -> ProgressResponse:
    """Overall progress is the mean of the items'; a succeeded job is exactly 1."""
    views = [
        ProgressItem(
            item_index=i.item_index,
            progress=min(1.0, i.progress),
            status=i.status,
            seed=i.seed,
            stage=i.stage,
        )
        for i in items
    ]
    overall = (
        1.0
        if job.status == JobStatus.succeeded
        else (sum(v.progress for v in views) / len(views) if views else 0.0)
    )
    return ProgressResponse(
        progress=round(overall, 4),
        status=JobStatus(job.status),
        items=views,
        stages=[Stage(name=n, weight=w) for n, w in stage_plan(job.params).stages],
    )


def _schema_fragment(model: type[BaseModel], names: Sequence[str] | None = None) -> dict[str, Any]:
    """`model`'s JSON Schema cut to the properties `names` (all by default), enums inlined.

    Enums are shared definitions in a model's schema; inlined, the fragment stands alone.
    """
    schema = model.model_json_schema()
    definitions = schema.get("$defs", {})
    properties: dict[str, Any] = {}
    for name in names or list(schema["properties"]):
        prop = dict(schema["properties"][name])
        ref = prop.pop("$ref", None)
        properties[name] = {**definitions[ref.rsplit("/", 1)[-1]], **prop} if ref else prop
    return {"type": "object", "properties": properties}


@cache
def sdxl_parameters_schema() -> dict[str, Any]:
    """The JSON Schema of the job parameters an SDXL checkpoint takes, cut from `JobCreateRequest`."""
    return _schema_fragment(JobCreateRequest, SDXL_PARAMETERS)


@cache
def upscaler_parameters_schema() -> dict[str, Any]:
    """The JSON Schema of a job's `upscale` object, which an upscaler model serves."""
    return _schema_fragment(UpscaleRequest)


def _parameters_schema(row: tables.Model) -> dict[str, Any]:
    # SDXL checkpoints and upscalers take what the contract accepts; other kinds describe their own.
    if row.kind == "sdxl-checkpoint":
        return sdxl_parameters_schema()
    if row.kind == "upscaler":
        return upscaler_parameters_schema()
    return dict(row.parameters_schema or {})


def model_summary(row: tables.Model) -> ModelSummary:
    """The list form of a model."""
    scale = (row.extra or {}).get("scale") if row.kind == "upscaler" else None
    return ModelSummary(
        id=row.id,
        name=row.name,
        kind=row.kind,
        version=row.version,
        scale=int(scale) if scale else None,
        installed=row.installed,
        enabled=row.enabled,
        parameters_schema=_parameters_schema(row),
    )


def model_descriptor(row: tables.Model) -> ModelDescriptor:
    """The detailed form of a model."""
    base: dict[str, Any] = model_summary(row).model_dump()
    return ModelDescriptor(
        **base,
        capabilities=list(row.capabilities or []),
        source=row.source,
        revision=row.revision,
        sha256=row.sha256,
        autov2=autov2(row.sha256) if row.sha256 else None,
        size_bytes=row.size_bytes,
        files=[ModelFile(path=f["path"], size_bytes=f["size"], sha256=f["sha256"]) for f in row.files or []],
        note=TINY_NOTE if row.is_tiny else None,
    )
