"""What a worker needs to run jobs: database, artifact store and lazily made engines."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from dreamforge.config import Settings
from dreamforge.engines.base import Engine, EngineError, EngineFactory, Upscaler, UpscalerFactory
from dreamforge.error_codes import ErrorCode
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
    # Provider name -> engine factory (runtime.engine_providers); engines are made on first use.
    engines: Mapping[str, EngineFactory]
    # Makes the upscaler of jobs that ask for `upscale` (runtime.make_upscaler); None offers none.
    upscalers: UpscalerFactory | None = None
    worker_id: str = field(default_factory=default_worker_id)
    # Set on graceful shutdown: the running job stops at its next step and goes back to the queue.
    stopping: threading.Event = field(default_factory=threading.Event)
    _made: dict[str, Engine] = field(default_factory=dict)
    _upscaler: Upscaler | None = None
    _engine_lock: threading.Lock = field(default_factory=threading.Lock)

    def engine_for(self, provider: str) -> Engine:
        """The engine of `provider`, made (and, for SDXL, torch imported) on first use."""
        with self._engine_lock:
            engine = self._made.get(provider)
            if engine is None:
                factory = self.engines.get(provider)
                if factory is None:
                    raise EngineError(
                        ErrorCode.unknown_provider, f"this worker does not offer provider {provider!r}"
                    )
                engine = self._made[provider] = factory()
            return engine

    def upscaler(self) -> Upscaler:
        """The upscaler, made (torch and spandrel imported) on first use."""
        with self._engine_lock:
            if self._upscaler is None:
                if self.upscalers is None:
                    raise EngineError(ErrorCode.engine_error, "this worker offers no upscaler")
                self._upscaler = self.upscalers()
            return self._upscaler
