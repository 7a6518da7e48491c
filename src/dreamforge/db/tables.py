"""The relational schema: jobs, their items, artifacts, events, webhook deliveries and models."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Stores UTC and always returns aware datetimes (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only auto-increments INTEGER PRIMARY KEY, so BigInteger must degrade there.
EventId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base for every table."""

    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Model(Base):
    """An installed checkpoint that jobs can render with."""

    __tablename__ = "models"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(40), default="sdxl-checkpoint")
    version: Mapped[str | None] = mapped_column(String(200))
    # "diffusers" (a pipeline folder) or "single_file" (one .safetensors plus a config folder).
    layout: Mapped[str] = mapped_column(String(20))
    path: Mapped[str] = mapped_column(Text)
    config_path: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(Text)
    revision: Mapped[str | None] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    installed: Mapped[bool] = mapped_column(Boolean, default=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    is_tiny: Mapped[bool] = mapped_column(Boolean, default=False)
    # Kinds that describe their own parameters (remote APIs) store them; an SDXL checkpoint's are the
    # request contract's own, derived where models are shown (api.views).
    parameters_schema: Mapped[dict[str, Any]] = mapped_column(default=dict)
    capabilities: Mapped[list[Any]] = mapped_column(default=list)
    # Every file of the install, `{"path": relative to the model folder, "size", "sha256"}`.
    files: Mapped[list[Any]] = mapped_column(default=list, server_default=text("'[]'"))
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A client's API key: only its keyed hash is stored (accounts.keys); jobs belong to one."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # The key's first characters (`df_live_abc123`), to tell keys apart in listings.
    shown: Mapped[str] = mapped_column(String(40))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    # Quotas; NULL takes the service default (DF_QUOTA_*), 0 means unlimited.
    max_active_jobs: Mapped[int | None] = mapped_column(Integer)
    max_images_per_day: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class Job(Base):
    """One accepted request; its items are rendered by a worker."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    type: Mapped[str] = mapped_column(String(20), default="generate")
    status: Mapped[str] = mapped_column(String(20), index=True)
    provider: Mapped[str] = mapped_column(String(100))
    model_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("models.id"))
    # The key that created the job (NULL with DF_AUTH=off); other keys cannot see it.
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("api_keys.id"), index=True)
    params: Mapped[dict[str, Any]] = mapped_column()
    count: Mapped[int] = mapped_column(Integer, default=1)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    # Scoped to the owning key (`<key id>:<Idempotency-Key>`), so two clients' keys never collide.
    idempotency_key: Mapped[str | None] = mapped_column(String(300), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    # Renewed by the running worker's heartbeat; once it lapses the job counts as abandoned.
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)
    # When the job was last handed to the broker; NULL while queued means no message carries it.
    dispatched_at: Mapped[datetime | None] = mapped_column()
    # Set by `POST /jobs/{id}/cancel` while the job runs; its worker stops at the next step.
    cancel_requested_at: Mapped[datetime | None] = mapped_column()
    error_code: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    items: Mapped[list[JobItem]] = relationship(
        back_populates="job", order_by="JobItem.item_index", cascade="all, delete-orphan"
    )


class JobItem(Base):
    """One image of a job's batch: its seed and progress."""

    __tablename__ = "job_items"
    __table_args__ = (UniqueConstraint("job_id", "item_index"),)

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"))
    item_index: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    seed: Mapped[int | None] = mapped_column(BigInteger)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    # The stage the item is in while it runs (`denoise`, `upscale`, `refine`); see jobs.stages.
    stage: Mapped[str | None] = mapped_column(String(20))

    job: Mapped[Job] = relationship(back_populates="items")


class Artifact(Base):
    """A stored image; the row exists only once its bytes are stored."""

    __tablename__ = "artifacts"
    # One artifact per item and stage, whatever a crash and a re-run do.
    __table_args__ = (UniqueConstraint("job_id", "item_index", "stage", name="uq_artifacts_job_item_stage"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    item_index: Mapped[int] = mapped_column(Integer)
    # `final`: the image the job delivers; `base`: the generated image before upscaling (keep_base).
    stage: Mapped[str] = mapped_column(String(10), default="final", server_default="final")
    format: Mapped[str] = mapped_column(String(10))
    content_type: Mapped[str] = mapped_column(String(50))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    s3_key: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobEvent(Base):
    """An ordered, persisted event of a job: the source of SSE, logs and replay."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    item_index: Mapped[int | None] = mapped_column(Integer)
    data: Mapped[dict[str, Any]] = mapped_column()
    ts: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One notification of a job's event to its webhook: written with the event, sent after commit.

    The row is the outbox: it outlives crashes and restarts until it is `delivered` or `failed`.
    """

    __tablename__ = "webhook_deliveries"
    # One delivery per job and event (`start`, `completed`, `item:<index>`), however often a step re-runs.
    __table_args__ = (
        UniqueConstraint("job_id", "key", name="uq_webhook_deliveries_job_key"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(40))
    event: Mapped[str] = mapped_column(String(20))
    item_index: Mapped[int | None] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(Text)
    # `pending` (to send, or being sent), `delivered`, `failed` (out of attempts, or refused for good).
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Attempts made before the current round: a redelivery starts the retry schedule again.
    round_start: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    # Set while an attempt is in flight; an attempt whose process died is retried once it lapses.
    sending_until: Mapped[datetime | None] = mapped_column()
    # Distributed: a broker message carries the delivery, due at this time; NULL: none does.
    dispatched_at: Mapped[datetime | None] = mapped_column()
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
