"""Accepting jobs: validation against the registry, idempotency and the first events.

Functions here stage changes in the caller's session and never commit: the caller commits,
then dispatches, so a worker never sees a job that is not in the database yet.
"""

from __future__ import annotations

import hashlib
import json
import uuid

from sqlalchemy.orm import Session

from dreamforge.api.schemas import DEFAULT_PROVIDER, JobCreateRequest, JobStatus
from dreamforge.db.tables import Job, JobItem, Model
from dreamforge.events.kinds import EventKind
from dreamforge.events.repository import add_event
from dreamforge.jobs import repository as jobs_repo
from dreamforge.registry.selection import resolve_model

PROVIDERS = frozenset({DEFAULT_PROVIDER})


class IdempotencyConflict(Exception):
    """The `Idempotency-Key` was already used with a different request body."""

    def __init__(self, key: str, job_id: uuid.UUID) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used with a different request body")
        self.key = key
        self.job_id = job_id


class UnknownProvider(Exception):
    """The job names a provider this service does not offer."""

    def __init__(self, provider: str) -> None:
        super().__init__(f"unknown provider {provider!r}; available: {', '.join(sorted(PROVIDERS))}")
        self.provider = provider


def request_fingerprint(request: JobCreateRequest) -> str:
    """A hash of the request with defaults filled in, so omitted defaults match explicit ones."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def find_replay(session: Session, key: str, fingerprint: str) -> Job | None:
    """The job already created under `key`; raises `IdempotencyConflict` if its body differed."""
    existing = jobs_repo.get_job_by_idempotency_key(session, key)
    if existing is not None and existing.request_hash != fingerprint:
        raise IdempotencyConflict(key, existing.id)
    return existing


def create_job(
    session: Session, request: JobCreateRequest, idempotency_key: str | None, *, default_model: str = ""
) -> tuple[Job, bool]:
    """Stage a new job (or find its idempotent twin); returns the job and whether it is new."""
    fingerprint = request_fingerprint(request)
    if idempotency_key is not None:
        existing = find_replay(session, idempotency_key, fingerprint)
        if existing is not None:
            return existing, False
    if request.provider not in PROVIDERS:
        raise UnknownProvider(request.provider)
    model: Model = resolve_model(session, request.model_id, default_model)
    job = Job(
        id=uuid.uuid4(),
        type=request.type,
        status=JobStatus.queued.value,
        provider=request.provider,
        model_id=model.id,
        params=request.model_dump(mode="json"),
        count=request.count,
        idempotency_key=idempotency_key,
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
        {"level": "info", "message": f"job accepted: {request.count} item(s) with model {model.name!r}"},
    )
    return job, True
