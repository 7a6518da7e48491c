"""A running job's step progress and cancel flag, written and read from a thread of its own so the
engine never waits on the database.

Each write is a transaction (the items' progress, their `progress` events, and a read of the cancel
flag): a few milliseconds on SQLite, more on Postgres, paid between two denoising steps when the
render thread made it. Here the render thread only hands over the latest numbers; the writer keeps
the newest report per item and writes whenever it is free. The runner flushes it before any
transaction of its own, so a stream still sees an item's progress before its artifact.

Between writes the thread reads the cancel flag every `poll_seconds`, so the render thread checks a
flag in memory at each step and never waits on a database round trip between two steps (on a GPU,
time the device would idle).
"""

from __future__ import annotations

import threading
import time
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
# Reads whether the job was asked to cancel.
CancelRead = Callable[[], bool]


class ProgressWriter:
    """The progress writer of one attempt; `close()` ends its thread."""

    def __init__(self, write: ProgressWrite, name: str, poll: CancelRead, poll_seconds: float) -> None:
        self._write = write
        self._poll = poll
        self._poll_seconds = poll_seconds
        self._pending: dict[int, StepReport] = {}
        self._writing = False
        self._closed = False
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        # Set once a write or a read found the job's cancel flag.
        self.canceled = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def report(self, reports: Mapping[int, StepReport]) -> None:
        """Hand over the newest progress of these items; raises what a write raised before."""
        self.raise_failure()
        with self._cond:
            self._pending.update(reports)
            self._cond.notify_all()

    def flush(self) -> None:
        """Return once everything reported is written; raises what a write raised."""
        with self._cond:
            while (self._pending or self._writing) and self._error is None:
                self._cond.wait()
        self.raise_failure()

    def close(self) -> None:
        """Stop the thread; what is still pending is dropped (the attempt is over)."""
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()
        self._thread.join()

    def raise_failure(self) -> None:
        """Raise the database failure a write or read met: the job's, as if the render thread had met it."""
        if self._error is not None:
            raise self._error

    def _loop(self) -> None:
        # Read at once: a cancel asked for while the job was being claimed stops it before its first step.
        due = time.monotonic()
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    wait = None if self.canceled.is_set() else due - time.monotonic()
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._closed:
                    return
                batch, self._pending = self._pending, {}
                self._writing = bool(batch)
            try:
                # A write reads the flag too, so it stands for the read that was due.
                if self._write(batch) if batch else self._poll():
                    self.canceled.set()
                due = time.monotonic() + self._poll_seconds
            except BaseException as exc:
                with self._cond:
                    self._error = exc
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
            if self._error is not None:
                return
