"""Wiring: which store, notifier, dispatcher and engines a process uses, chosen from settings alone.

Embedded (no `DF_REDIS_URL`): one process, an in-process worker thread, local notifications, a
webhook deliverer thread pool. Distributed: API processes publish jobs to Celery on Redis and listen
to Redis pub/sub for events; `dreamforge worker` processes run them, and `dreamforge worker --queue
webhooks` processes deliver webhooks. `DF_MINIO_ENDPOINT` picks S3 storage in either.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dreamforge.config import Settings
from dreamforge.db.migrate import upgrade_to_head
from dreamforge.db.session import (
    announce_commits,
    create_db_engine,
    create_loop_read_engine,
    create_poll_read_engine,
    make_session_factory,
    on_commits,
    transaction,
)
from dreamforge.db.tables import Job, WebhookDelivery
from dreamforge.engines.base import (
    DEFAULT_PROVIDER,
    OPENAI_IMAGES_PROVIDER,
    REMOTE_PROVIDERS,
    EngineFactory,
    Upscaler,
    UpscalerFactory,
)
from dreamforge.engines.base import Engine as RenderEngine
from dreamforge.events.notifier import LocalNotifier, Notifier, RedisNotifier
from dreamforge.jobs.dispatch import Dispatcher
from dreamforge.jobs.recovery import Reconciler
from dreamforge.registry.remote import RemoteModelOffer, sync_remote_models
from dreamforge.storage.base import ArtifactStore, FileServingStore
from dreamforge.storage.local import LocalArtifactStore
from dreamforge.webhooks.address import WebhookPolicy
from dreamforge.webhooks.deliverer import DeliveryQueue, ThreadDeliverer, WebhookSweeper
from dreamforge.webhooks.delivery import Deliveries
from dreamforge.webhooks.outbox import DELIVER
from dreamforge.webhooks.sender import WebhookSender
from dreamforge.webhooks.signing import key_secret, service_secret

if TYPE_CHECKING:
    from celery import Celery

    from dreamforge.worker.context import WorkerContext

log = logging.getLogger(__name__)


class Service(Protocol):
    """A background part started and stopped with the process."""

    def start(self) -> None:
        """Begin work."""

    def stop(self, timeout: float = 5.0) -> None:
        """Finish or abandon work, within `timeout` seconds."""


# A readiness check raises when its component is unreachable.
Check = Callable[[], None]


@dataclass
class Runtime:
    """The long-lived parts one process is wired with."""

    settings: Settings
    db_engine: Engine
    sessions: sessionmaker[Session]
    store: ArtifactStore
    notifier: Notifier
    dispatcher: Dispatcher
    # Provider name -> the engine that renders its jobs; `JobCreateRequest.provider` must be a key.
    providers: Mapping[str, EngineFactory]
    services: list[Service] = field(default_factory=list)
    # Components `/readyz` reports on, by name.
    checks: dict[str, Check] = field(default_factory=dict)
    # Set in processes that run jobs (the embedded API and Celery workers).
    worker_context: WorkerContext | None = None
    # Which webhook URLs jobs may name (DF_WEBHOOK_ALLOW_HOSTS), and how deliveries are attempted and queued.
    webhook_policy: WebhookPolicy = field(default_factory=WebhookPolicy)
    deliveries: Deliveries | None = None
    webhook_queue: DeliveryQueue | None = None
    # SQLite only: the engine of reads the API runs on its event loop (see `create_loop_read_engine`).
    loop_reads: Engine | None = None
    # Postgres only: the engine of the polled reads (see `create_poll_read_engine`).
    poll_reads: Engine | None = None
    _started: list[Service] = field(default_factory=list)

    @property
    def remote_providers(self) -> frozenset[str]:
        """The enabled providers whose jobs go to a remote API (their own queue and threads)."""
        return frozenset(self.providers) & REMOTE_PROVIDERS

    @property
    def serves_files(self) -> bool:
        """True when artifact URLs point at this API (`/v1/files`) rather than at S3."""
        return isinstance(self.store, FileServingStore)

    def start(self) -> None:
        """Start background services (the in-process worker, event listener, reconciler)."""
        for service in self.services:
            service.start()
            self._started.append(service)

    def close(self) -> None:
        """Stop services and release connections."""
        while self._started:
            self._started.pop().stop()
        if self.deliveries is not None:
            self.deliveries.sender.close()
        self.db_engine.dispose()
        for engine in (self.loop_reads, self.poll_reads):
            if engine is not None:
                engine.dispose()


def store_serves_files(settings: Settings) -> bool:
    """True when the settings pick the local store, whose URLs the API serves itself."""
    return not settings.minio_endpoint


def build_store(settings: Settings) -> ArtifactStore:
    """The artifact store the settings ask for: S3 when `DF_MINIO_ENDPOINT` is set, else local disk."""
    if not store_serves_files(settings):
        from dreamforge.storage.s3 import S3ArtifactStore

        store = S3ArtifactStore(
            endpoint=settings.minio_endpoint,
            access_key=settings.minio_access_key,
            secret_key=settings.minio_secret_key,
            bucket=settings.minio_bucket,
            region=settings.minio_region,
            ttl_seconds=settings.artifact_url_ttl_seconds,
            public_endpoint=settings.minio_public_endpoint,
            retry_attempts=settings.storage_retry_attempts,
        )
        try:
            store.ensure_bucket()
        except Exception as exc:
            # Start anyway: /readyz reports storage down, and uploads retry until it is back.
            log.error("artifact bucket not ready: %s", exc)
        return store
    return LocalArtifactStore(
        settings.artifacts_dir, settings.url_signing_key, settings.artifact_url_ttl_seconds
    )


def engine_providers(settings: Settings) -> dict[str, EngineFactory]:
    """The providers `DF_PROVIDERS` enables and how to make each one's engine (torch is imported on the
    first local job; a remote provider never imports it)."""

    def sdxl() -> RenderEngine:
        from dreamforge.engines.sdxl import SDXLEngine

        return SDXLEngine(
            device=settings.device,
            dtype=settings.dtype,
            cpu_offload=settings.cpu_offload,
            compile_unet=settings.compile,
            vae_path=settings.vae_model,
            vae_tiling_pixels=int(settings.vae_tiling_megapixels * 1_000_000),
            cpu_threads=settings.cpu_threads,
        )

    def openai_images() -> RenderEngine:
        from dreamforge.engines.openai_images import OpenAIImagesEngine

        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        return OpenAIImagesEngine(
            settings.openai_base_url,
            key,
            timeout=settings.openai_timeout_seconds,
            max_attempts=settings.openai_max_attempts,
        )

    # Settings refuse names outside KNOWN_PROVIDERS, so every enabled name has a factory here.
    known: dict[str, EngineFactory] = {DEFAULT_PROVIDER: sdxl, OPENAI_IMAGES_PROVIDER: openai_images}
    return {name: known[name] for name in settings.enabled_providers}


def remote_offers(settings: Settings) -> list[RemoteModelOffer]:
    """The models the enabled remote providers serve, as the registry lists them."""
    from dreamforge.engines.openai_images import parameters_schema

    if OPENAI_IMAGES_PROVIDER not in settings.enabled_providers:
        return []
    names = [m.strip() for m in settings.openai_models.split(",") if m.strip()]
    return [
        RemoteModelOffer(
            OPENAI_IMAGES_PROVIDER, name, parameters_schema(name), source=settings.openai_base_url
        )
        for name in names
    ]


def make_upscaler(settings: Settings) -> UpscalerFactory:
    """How to make this process's upscaler (torch and spandrel are imported on first use)."""

    def spandrel() -> Upscaler:
        from dreamforge.engines.upscale import SpandrelUpscaler

        return SpandrelUpscaler(
            device=settings.device,
            dtype=settings.dtype,
            tile=settings.upscale_tile,
            cpu_threads=settings.cpu_threads,
        )

    return spandrel


def _database_check(engine: Engine) -> Check:
    def check() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    return check


def _redis_check(redis_url: str) -> Check:
    def check() -> None:
        import redis

        client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()

    return check


@dataclass
class _Parts:
    """What every process has, whatever the topology."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ArtifactStore
    notifier: Notifier
    providers: dict[str, EngineFactory]
    checks: dict[str, Check]
    deliveries: Deliveries

    def runtime(
        self,
        dispatcher: Dispatcher,
        services: list[Service],
        webhook_queue: DeliveryQueue,
        worker_context: WorkerContext | None = None,
    ) -> Runtime:
        # Every committed delivery is handed to this process's webhook queue.
        on_commits(self.sessions, DELIVER, webhook_queue.send)
        return Runtime(
            settings=self.settings,
            db_engine=self.engine,
            sessions=self.sessions,
            store=self.store,
            notifier=self.notifier,
            dispatcher=dispatcher,
            providers=self.providers,
            services=services,
            checks=self.checks,
            worker_context=worker_context,
            webhook_policy=self.deliveries.sender.policy,
            deliveries=self.deliveries,
            webhook_queue=webhook_queue,
            loop_reads=create_loop_read_engine(self.settings.database_url),
            poll_reads=create_poll_read_engine(self.settings.database_url),
        )

    def worker_context(self) -> WorkerContext:
        from dreamforge.worker.context import WorkerContext

        return WorkerContext(
            settings=self.settings,
            sessions=self.sessions,
            store=self.store,
            engines=self.providers,
            upscalers=make_upscaler(self.settings),
        )


def _common(settings: Settings, notifier: Notifier, *, migrate: bool) -> _Parts:
    settings.ensure_dirs()
    if migrate:
        upgrade_to_head(settings.database_url)
    engine = create_db_engine(settings.database_url)
    sessions = make_session_factory(engine)
    # Every committed event wakes the job's streams; the one place commits are announced.
    announce_commits(sessions, notifier.publish)
    store = build_store(settings)
    checks: dict[str, Check] = {"database": _database_check(engine), "storage": store.ping}
    if settings.distributed:
        checks["broker"] = _redis_check(settings.redis_url)
    deliveries = _deliveries(settings, sessions, store)
    return _Parts(settings, engine, sessions, store, notifier, engine_providers(settings), checks, deliveries)


def _deliveries(settings: Settings, sessions: sessionmaker[Session], store: ArtifactStore) -> Deliveries:
    """How this process makes webhook attempts: its address policy, signer and body."""
    from dreamforge.api.views import webhook_payload
    from dreamforge.jobs.repository import list_artifacts

    policy = WebhookPolicy.from_setting(settings.webhook_allow_hosts)
    sender = WebhookSender(
        policy,
        connect_timeout=settings.webhook_connect_timeout_seconds,
        read_timeout=settings.webhook_read_timeout_seconds,
    )
    base_url = settings.public_base_url
    signing_key = settings.url_signing_key
    configured = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None

    def payload(session: Session, job: Job, delivery: WebhookDelivery) -> dict[str, Any]:
        artifacts = list_artifacts(session, job.id)
        return webhook_payload(job, delivery, artifacts, store, base_url).model_dump(mode="json")

    def secret(key_id: uuid.UUID | None) -> str:
        return key_secret(signing_key, key_id) if key_id else service_secret(signing_key, configured)

    # Longer than an attempt can take (connect, answer, capped body), so a live attempt keeps its claim.
    lease = settings.webhook_connect_timeout_seconds + 2 * settings.webhook_read_timeout_seconds + 5
    return Deliveries(sessions, sender, payload, secret, settings.webhook_retry_schedule, lease)


def _distributed(
    settings: Settings, celery: Celery, *, listen: bool, migrate: bool
) -> tuple[_Parts, Dispatcher, DeliveryQueue, list[Service]]:
    from dreamforge.broker.celery import CeleryDispatcher, CeleryWebhookQueue

    notifier = RedisNotifier(settings.redis_url, listen=listen)
    parts = _common(settings, notifier, migrate=migrate)
    # Remote providers' jobs go to their own queue: a CPU worker runs them, never behind a GPU job.
    routes = dict.fromkeys(REMOTE_PROVIDERS & set(parts.providers), settings.remote_queue)
    dispatcher = CeleryDispatcher(celery, parts.sessions, settings.queue, routes)
    webhook_queue = CeleryWebhookQueue(celery, parts.sessions, settings.webhook_queue)
    sweeper = WebhookSweeper(
        parts.sessions,
        webhook_queue,
        interval_seconds=settings.recovery_interval_seconds,
        # A message not taken by the time an attempt could have ended is re-sent (duplicates are no-ops).
        stale_seconds=parts.deliveries.lease_seconds + settings.recovery_interval_seconds,
    )
    reconciler = Reconciler(
        parts.sessions,
        dispatcher,
        max_attempts=settings.max_attempts,
        interval_seconds=settings.recovery_interval_seconds,
        broker_reset=dispatcher.broker_reset,
    )
    return parts, dispatcher, webhook_queue, [notifier, reconciler, sweeper]


def build_runtime(settings: Settings, *, migrate: bool = True) -> Runtime:
    """Wire an API process: embedded (in-process worker) unless `DF_REDIS_URL` names a broker."""
    if settings.distributed:
        from dreamforge.broker.celery import make_celery

        parts, dispatcher, queue, services = _distributed(
            settings, make_celery(settings), listen=True, migrate=migrate
        )
        _sync_remote_models(parts)
        return parts.runtime(dispatcher, [*services, *_retention(parts)], queue)
    from dreamforge.worker.inprocess import InProcessRunner

    parts = _common(settings, LocalNotifier(), migrate=migrate)
    _sync_remote_models(parts)
    ctx = parts.worker_context()
    remote = REMOTE_PROVIDERS & set(parts.providers)
    runner = InProcessRunner(ctx, remote_providers=remote, remote_threads=settings.remote_concurrency)
    deliverer = ThreadDeliverer(parts.deliveries, parts.sessions, settings.webhook_concurrency)
    return parts.runtime(runner, [runner, deliverer, *_retention(parts)], deliverer, worker_context=ctx)


def _sync_remote_models(parts: _Parts) -> None:
    """List the enabled remote providers' models in the registry (API processes, at start)."""
    for attempt in range(2):
        try:
            with transaction(parts.sessions) as s:
                sync_remote_models(s, remote_offers(parts.settings), parts.providers.keys())
            return
        except IntegrityError:
            # Another replica starting at the same moment inserted the same rows: update them instead.
            if attempt:
                raise


def _retention(parts: _Parts) -> list[Service]:
    """The retention sweeper of an API process, when `DF_RETENTION_DAYS` is set (replicas may all run
    one: their sweeps lock different jobs)."""
    if parts.settings.retention_days <= 0:
        return []
    from dreamforge.jobs.retention import RetentionSweeper

    return [
        RetentionSweeper(
            parts.sessions,
            parts.store,
            days=parts.settings.retention_days,
            interval_seconds=parts.settings.retention_sweep_seconds,
        )
    ]


def build_worker_runtime(settings: Settings, celery: Celery) -> Runtime:
    """Wire a Celery worker process: it runs jobs and publishes their events to Redis."""
    if not settings.distributed:
        raise RuntimeError("a Celery worker needs DF_REDIS_URL (the embedded topology runs its own worker)")
    parts, dispatcher, queue, services = _distributed(settings, celery, listen=False, migrate=True)
    return parts.runtime(dispatcher, services, queue, worker_context=parts.worker_context())
