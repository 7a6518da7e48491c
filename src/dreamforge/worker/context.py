"""What a worker needs to run jobs: database, artifact store, notifier and a lazily made engine."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from dreamforge.config import Settings
from dreamforge.engines.base import Engine
from dreamforge.events.notifier import Notifier
from dreamforge.storage.base import ArtifactStore


def default_worker_id() -> str:
    """`host:pid`, so logs and the jobs table say which process ran a job."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class WorkerContext:
    """Shared, long-lived parts of a worker process."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: ArtifactStore
    notifier: Notifier
    worker_id: str = field(default_factory=default_worker_id)
    # Set on graceful shutdown: the running job stops at its next step and goes back to the queue.
    stopping: threading.Event = field(default_factory=threading.Event)
    _engine: Engine | None = None
    _engine_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def engine(self) -> Engine:
        """The SDXL engine, created (and torch imported) on first use."""
        with self._engine_lock:
            if self._engine is None:
                from dreamforge.engines.sdxl import SDXLEngine

                s = self.settings
                self._engine = SDXLEngine(device=s.device, dtype=s.dtype, cpu_offload=s.cpu_offload)
            return self._engine
