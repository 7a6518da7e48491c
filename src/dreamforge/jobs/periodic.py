"""A background thread that runs one task at an interval until stopped: the sweeps' common shape."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class PeriodicTask:
    """Calls `run_once` every `interval` seconds (the first after `first_delay`) on a daemon thread.

    Errors in `handled` are logged and retried at the next interval, so the thread outlives an outage
    of what the task talks to; `stopping` is set once `stop` was called.
    """

    handled: tuple[type[BaseException], ...] = (Exception,)

    def __init__(self, name: str, interval_seconds: float, first_delay_seconds: float | None = None) -> None:
        self.interval = interval_seconds
        self.first_delay = interval_seconds if first_delay_seconds is None else first_delay_seconds
        self.stopping = threading.Event()
        self._name = name
        self._thread = threading.Thread(target=self._loop, name=f"dreamforge-{name}", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (a run in progress finishes first, up to `timeout`)."""
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def run_once(self) -> object:
        """One run of the task."""
        raise NotImplementedError

    def _loop(self) -> None:
        delay = self.first_delay
        while not self.stopping.wait(delay):
            delay = self.interval
            try:
                self.run_once()
            except self.handled as exc:
                log.warning("%s: sweep failed, retrying in %.0f s (%s)", self._name, self.interval, exc)
