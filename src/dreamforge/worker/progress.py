"""A running job's step progress, written from a thread of its own so the engine never waits on it.

Each write is a transaction (the items' progress, their `progress` events, and a read of the cancel
flag): a few milliseconds on SQLite, more on Postgres, paid between two denoising steps when the
render thread made it. Here the render thread only hands over the latest numbers; the writer keeps
the newest report per item and writes whenever it is free. The runner flushes it before any
transaction of its own, so a stream still sees an item's progress before its artifact.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class StepReport:
    """Where one item is: the stage, its step of `total`, and the item's progress (0-1) it makes."""

    stage: str
    step: int
    total: int
    progress: float


# Writes the reports, by item index, in one transaction; returns whether the job was asked to cancel.
ProgressWrite = Callable[[Mapping[int, StepReport]], bool]


class ProgressWriter:
    """The progress writer of one attempt; `close()` ends its thread."""

    def __init__(self, write: ProgressWrite, name: str) -> None:
        self._write = write
        self._pending: dict[int, StepReport] = {}
        self._writing = False
        self._closed = False
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        # Set once a write found the job's cancel flag.
        self.canceled = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def report(self, reports: Mapping[int, StepReport]) -> None:
        """Hand over the newest progress of these items; raises what a write raised before."""
        self._raise_failure()
        with self._cond:
            self._pending.update(reports)
            self._cond.notify_all()

    def flush(self) -> None:
        """Return once everything reported is written; raises what a write raised."""
        with self._cond:
            while (self._pending or self._writing) and self._error is None:
                self._cond.wait()
        self._raise_failure()

    def close(self) -> None:
        """Stop the thread; what is still pending is dropped (the attempt is over)."""
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()
        self._thread.join()

    def _raise_failure(self) -> None:
        # The database failure a write met is the job's, as if the render thread had written.
        if self._error is not None:
            raise self._error

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                batch, self._pending = self._pending, {}
                self._writing = True
            try:
                if self._write(batch):
                    self.canceled.set()
            except BaseException as exc:
                with self._cond:
                    self._error = exc
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
            if self._error is not None:
                return
