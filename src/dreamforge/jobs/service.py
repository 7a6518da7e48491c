"""Accepting jobs: validation against the registry, idempotency, the first events, and dispatch.

`create_job` stages changes in the caller's session and never commits. `submit_job` is the one
path the API takes: create, commit, then dispatch, so a worker never sees a job that is not in
the database yet, and a job the broker refused is withdrawn before anyone is told it exists.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Collection
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dreamforge.db.tables import Job, JobItem, Model
from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError
from dreamforge.events.kinds import EventKind
from dreamforge.events.repository import add_event
from dreamforge.jobs import repository as jobs_repo
from dreamforge.jobs.dispatch import BrokerUnavailable, Dispatcher
from dreamforge.jobs.lifecycle import request_cancel
from dreamforge.jobs.limits import (
    NO_LIMITS,
    JobLimits,
    JobShape,
    KeyQuota,
    check_queue,
    check_quota,
    check_request,
)
from dreamforge.jobs.parameters import check_parameters
from dreamforge.jobs.state import JobStatus
from dreamforge.registry.selection import resolve_model, resolve_remote_model, resolve_upscaler
from dreamforge.webhooks.address import WebhookPolicy, check_webhook_url


class UpscaleShape(Protocol):
    """What accepting a job reads from its `upscale` request."""

    @property
    def upscaler_model_id(self) -> uuid.UUID | None: ...


class JobRequest(JobShape, Protocol):
    """What accepting a job reads from a validated request (the API's `JobCreateRequest`)."""

    @property
    def upscale(self) -> UpscaleShape | None: ...

    @property
    def type(self) -> str: ...

    @property
    def provider(self) -> str: ...

    @property
    def model_id(self) -> uuid.UUID | None: ...

    @property
    def webhook(self) -> str | None: ...

    @property
    def model_fields_set(self) -> set[str]:
        """The fields the request set itself (defaults left out)."""
        ...

    def model_dump(self, *, mode: str = ...) -> dict[str, Any]:
        """Every parameter with defaults filled in; `mode="json"` for the idempotency fingerprint."""
        ...

    def model_dump_stored(self) -> dict[str, Any]:
        """The parameters the job row stores (JSON), every default filled in."""
        ...


class IdempotencyConflict(DreamForgeError):
    """The `Idempotency-Key` was already used with a different request body."""

    code = ErrorCode.idempotency_key_reused
    status = 409

    def __init__(self, key: str, job_id: uuid.UUID) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used with a different request body",
            details={"idempotency_key": key, "job_id": str(job_id)},
        )
        self.key = key
        self.job_id = job_id


class UnknownProvider(DreamForgeError):
    """The job names a provider this service does not offer."""

    code = ErrorCode.unknown_provider
    status = 422

    def __init__(self, provider: str, available: Collection[str]) -> None:
        super().__init__(
            f"unknown provider {provider!r}; available: {', '.join(sorted(available))}",
            details={"field": "provider", "provider": provider},
        )
        self.provider = provider


def request_fingerprint(request: JobRequest) -> str:
    """A hash of the request with defaults filled in, so omitted defaults match explicit ones."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def stored_idempotency_key(key: str, owner: uuid.UUID | None) -> str:
    """The key as the job row stores it: scoped to the API key, so two clients' keys never collide."""
    return f"{owner}:{key}" if owner is not None else key


def find_replay(session: Session, key: str, fingerprint: str, owner: uuid.UUID | None = None) -> Job | None:
    """The job `owner` already created under `key`; `IdempotencyConflict` if its body differed."""
    existing = jobs_repo.get_job_by_idempotency_key(session, stored_idempotency_key(key, owner))
    if existing is not None and existing.request_hash != fingerprint:
        raise IdempotencyConflict(key, existing.id)
    return existing


def create_job(
    session: Session,
    request: JobRequest,
    idempotency_key: str | None,
    *,
    providers: Collection[str],
    default_model: str = "",
    limits: JobLimits = NO_LIMITS,
    owner: uuid.UUID | None = None,
    quota: KeyQuota | None = None,
    webhook_policy: WebhookPolicy | None = None,
    remote_providers: Collection[str] = (),
) -> tuple[Job, bool]:
    """Stage a new job (or find its idempotent twin); returns the job and whether it is new.

    `owner` is the API key the job belongs to; its idempotency keys are its own. `webhook_policy`
    refuses a webhook URL that may not be called (`WebhookRefused`, 422). A job for one of the
    `remote_providers` renders with one of its models and may set only the fields that model honours.

    `limits` apply to a new job only: a replay is answered with its job whatever the limits or the
    queue are now. The queue is checked last, so a request that could never be accepted gets its
    422 rather than a 429 that would only make the client retry it.
    """
    fingerprint = request_fingerprint(request)
    if idempotency_key is not None:
        existing = find_replay(session, idempotency_key, fingerprint, owner)
        if existing is not None:
            return existing, False
    if request.provider not in providers:
        raise UnknownProvider(request.provider, providers)
    check_request(request, limits)
    if request.webhook is not None and webhook_policy is not None:
        check_webhook_url(request.webhook, webhook_policy)
    model: Model
    if request.provider in remote_providers:
        model = resolve_remote_model(session, request.provider, request.model_id)
        check_parameters(request.model_fields_set, request.model_dump(), model)
    else:
        model = resolve_model(session, request.model_id, default_model)
    params = request.model_dump_stored()
    upscaler: Model | None = None
    if request.upscale is not None:
        # Resolved now, so the job upscales with the model it was accepted with, whatever is installed later.
        upscaler = resolve_upscaler(session, request.upscale.upscaler_model_id)
        params["upscale"]["upscaler_model_id"] = str(upscaler.id)
    if quota is not None:
        check_quota(session, quota, request.count)
    check_queue(session, limits)
    job = Job(
        id=uuid.uuid4(),
        type=request.type,
        status=JobStatus.queued.value,
        provider=request.provider,
        model_id=model.id,
        api_key_id=owner,
        params=params,
        count=request.count,
        idempotency_key=(
            stored_idempotency_key(idempotency_key, owner) if idempotency_key is not None else None
        ),
        request_hash=fingerprint,
        items=[JobItem(item_index=i) for i in range(request.count)],
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, EventKind.status, {"status": JobStatus.queued.value})
    add_event(
        session,
        job.id,
        EventKind.log,
        {
            "level": "info",
            "message": f"job accepted: {request.count} item(s) with model {model.name!r}"
            + (f", upscaled with {upscaler.name!r}" if upscaler else ""),
        },
    )
    return job, True


def submit_job(
    session: Session,
    dispatcher: Dispatcher,
    request: JobRequest,
    idempotency_key: str | None,
    *,
    providers: Collection[str],
    default_model: str = "",
    limits: JobLimits = NO_LIMITS,
    owner: uuid.UUID | None = None,
    quota: KeyQuota | None = None,
    webhook_policy: WebhookPolicy | None = None,
    remote_providers: Collection[str] = (),
) -> tuple[Job, bool]:
    """Create and commit a job, then dispatch it; returns the job and whether it is new.

    A replay (same key, same body) returns the existing job, also when a concurrent request with
    the key committed first. When the broker refuses the message the job is withdrawn and
    `BrokerUnavailable` raised: nothing was accepted, so the client may simply retry.
    """
    try:
        job, created = create_job(
            session,
            request,
            idempotency_key,
            providers=providers,
            default_model=default_model,
            limits=limits,
            owner=owner,
            quota=quota,
            webhook_policy=webhook_policy,
            remote_providers=remote_providers,
        )
        session.commit()
    except IntegrityError:
        # A concurrent request with the same key committed first: answer with its job.
        session.rollback()
        if idempotency_key is None:
            raise
        replay = find_replay(session, idempotency_key, request_fingerprint(request), owner)
        if replay is None:
            raise
        return replay, False
    if created:
        try:
            dispatcher.dispatch(job.id)
        except BrokerUnavailable as exc:
            # No message carries the job, so no worker can have it: deleting it is safe. Were the
            # delete to fail too, the reconciler would send the job once the broker is back.
            jobs_repo.delete_job(session, job.id)
            session.commit()
            raise BrokerUnavailable(
                "the job queue is unreachable; the job was not accepted, retry shortly",
                details={"component": "broker", "reason": exc.message},
            ) from None
    return job, created


def cancel_job(session: Session, job_id: uuid.UUID) -> Job | None:
    """Cancel a job and commit: at once when queued, within a step when running; None if unknown.

    Raises `JobFinished` for a job that already succeeded or failed.
    """
    job = jobs_repo.lock_job(session, job_id)
    if job is None:
        return None
    request_cancel(session, job)
    session.commit()
    return job
