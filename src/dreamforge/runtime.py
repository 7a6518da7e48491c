"""Wiring: which store, notifier and dispatcher a process uses, chosen from settings alone.

Embedded (no `DF_REDIS_URL`): one process, an in-process worker thread, local notifications.
Distributed: API processes publish jobs to Celery on Redis and listen to Redis pub/sub for
events; `dreamforge worker` processes run them. `DF_MINIO_ENDPOINT` picks S3 storage in either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from dreamforge.config import Settings
from dreamforge.db.migrate import upgrade_to_head
from dreamforge.db.session import create_db_engine, make_session_factory
from dreamforge.events.notifier import LocalNotifier, Notifier, RedisNotifier
from dreamforge.jobs.dispatch import CeleryDispatcher, Dispatcher
from dreamforge.jobs.recovery import Reconciler
from dreamforge.storage.base import ArtifactStore
from dreamforge.storage.local import LocalArtifactStore

if TYPE_CHECKING:
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
    services: list[Service] = field(default_factory=list)
    # Components `/readyz` reports on, by name.
    checks: dict[str, Check] = field(default_factory=dict)
    # Set in processes that run jobs (the embedded API and Celery workers).
    worker_context: WorkerContext | None = None
    _started: list[Service] = field(default_factory=list)

    def start(self) -> None:
        """Start background services (the in-process worker, event listener, reconciler)."""
        for service in self.services:
            service.start()
            self._started.append(service)

    def close(self) -> None:
        """Stop services and release connections."""
        while self._started:
            self._started.pop().stop()
        self.db_engine.dispose()


def build_store(settings: Settings) -> ArtifactStore:
    """The artifact store the settings ask for: S3 when `DF_MINIO_ENDPOINT` is set, else local disk."""
    if settings.minio_endpoint:
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
    checks: dict[str, Check]

    def runtime(
        self,
        notifier: Notifier,
        dispatcher: Dispatcher,
        services: list[Service],
        worker_context: WorkerContext | None = None,
    ) -> Runtime:
        return Runtime(
            settings=self.settings,
            db_engine=self.engine,
            sessions=self.sessions,
            store=self.store,
            notifier=notifier,
            dispatcher=dispatcher,
            services=services,
            checks=self.checks,
            worker_context=worker_context,
        )


def _common(settings: Settings, migrate: bool) -> _Parts:
    settings.ensure_dirs()
    if migrate:
        upgrade_to_head(settings.database_url)
    engine = create_db_engine(settings.database_url)
    store = build_store(settings)
    checks: dict[str, Check] = {"database": _database_check(engine), "storage": store.ping}
    if settings.distributed:
        checks["broker"] = _redis_check(settings.redis_url)
    return _Parts(settings, engine, make_session_factory(engine), store, checks)


def _distributed(settings: Settings, parts: _Parts, celery: Any, *, listen: bool) -> Runtime:
    notifier = RedisNotifier(settings.redis_url, listen=listen)
    dispatcher = CeleryDispatcher(celery, parts.sessions, settings.queue)
    reconciler = Reconciler(
        parts.sessions,
        dispatcher,
        notifier,
        max_attempts=settings.max_attempts,
        interval_seconds=settings.recovery_interval_seconds,
    )
    return parts.runtime(notifier, dispatcher, [notifier, reconciler])


def build_runtime(settings: Settings, *, migrate: bool = True) -> Runtime:
    """Wire an API process: embedded (in-process worker) unless `DF_REDIS_URL` names a broker."""
    from dreamforge.worker.context import WorkerContext
    from dreamforge.worker.inprocess import InProcessRunner

    parts = _common(settings, migrate)
    if settings.distributed:
        from dreamforge.worker.celery_app import make_celery

        return _distributed(settings, parts, make_celery(settings), listen=True)
    notifier = LocalNotifier()
    ctx = WorkerContext(settings=settings, sessions=parts.sessions, store=parts.store, notifier=notifier)
    runner = InProcessRunner(ctx)
    return parts.runtime(notifier, runner, [runner], worker_context=ctx)


def build_worker_runtime(settings: Settings, celery: Any) -> Runtime:
    """Wire a Celery worker process: it runs jobs and publishes their events to Redis."""
    from dreamforge.worker.context import WorkerContext

    if not settings.distributed:
        raise RuntimeError("a Celery worker needs DF_REDIS_URL (the embedded topology runs its own worker)")
    runtime = _distributed(settings, _common(settings, migrate=True), celery, listen=False)
    runtime.worker_context = WorkerContext(
        settings=settings, sessions=runtime.sessions, store=runtime.store, notifier=runtime.notifier
    )
    return runtime
