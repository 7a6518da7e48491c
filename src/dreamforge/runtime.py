"""Wiring: which store, notifier and dispatcher a process uses, chosen from settings alone."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from dreamforge.config import Settings
from dreamforge.db.migrate import upgrade_to_head
from dreamforge.db.session import create_db_engine, make_session_factory
from dreamforge.events.notifier import LocalNotifier, Notifier
from dreamforge.jobs.dispatch import Dispatcher
from dreamforge.storage.base import ArtifactStore
from dreamforge.storage.local import LocalArtifactStore

log = logging.getLogger(__name__)


class Service(Protocol):
    """A background part started and stopped with the process."""

    def start(self) -> None:
        """Begin work."""

    def stop(self, timeout: float = 5.0) -> None:
        """Finish or abandon work, within `timeout` seconds."""


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

    def start(self) -> None:
        """Start background services (the in-process worker in the embedded topology)."""
        for service in self.services:
            service.start()

    def close(self) -> None:
        """Stop services and release connections."""
        for service in reversed(self.services):
            service.stop()
        self.db_engine.dispose()


def build_store(settings: Settings) -> ArtifactStore:
    """The artifact store the settings ask for."""
    return LocalArtifactStore(
        settings.artifacts_dir, settings.url_signing_key, settings.artifact_url_ttl_seconds
    )


def build_runtime(settings: Settings, *, migrate: bool = True) -> Runtime:
    """Wire an API process: embedded (in-process worker) unless settings name shared services."""
    from dreamforge.worker.context import WorkerContext
    from dreamforge.worker.inprocess import InProcessRunner

    settings.ensure_dirs()
    if migrate:
        upgrade_to_head(settings.database_url)
    engine = create_db_engine(settings.database_url)
    sessions = make_session_factory(engine)
    store = build_store(settings)
    notifier = LocalNotifier()
    runner = InProcessRunner(
        WorkerContext(settings=settings, sessions=sessions, store=store, notifier=notifier)
    )
    return Runtime(
        settings=settings,
        db_engine=engine,
        sessions=sessions,
        store=store,
        notifier=notifier,
        dispatcher=runner,
        services=[runner],
    )
