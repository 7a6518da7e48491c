"""Download progress on stderr: a Rich bar on a terminal, plain lines otherwise, nothing with -q."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from dreamforge.registry.transfer import ProgressSink, SilentProgress

_PLAIN_EVERY_SECONDS = 5.0


class RichProgress:
    """One bar per file with bytes, speed and ETA."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}", justify="left"),
            BarColumn(bar_width=None),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None
        self._name = ""

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, name: str, total: int | None, done: int) -> None:
        """Add a bar for the file; a resumed try moves the same bar back to what is on disk."""
        if self._task is not None and self._name == name:
            self._progress.update(self._task, total=total, completed=done)
            return
        self._name = name
        self._task = self._progress.add_task(name, total=total, completed=done)

    def advance(self, n: int) -> None:
        """Move the current bar."""
        if self._task is not None:
            self._progress.advance(self._task, n)

    def finish(self) -> None:
        """Nothing to do: the bar stays, full."""
        self._task = None

    def note(self, message: str) -> None:
        """Print above the bars."""
        self._progress.console.print(f"[yellow]{message}[/yellow]")


class PlainProgress:
    """Log lines for pipes and CI logs: a start line, a line every few seconds, a done line."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._name = ""
        self._total: int | None = None
        self._done = 0
        self._started = 0.0
        self._start_bytes = 0
        self._last = 0.0

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def start(self, name: str, total: int | None, done: int) -> None:
        """Announce the file."""
        self._name, self._total, self._done = name, total, done
        self._started = self._last = time.monotonic()
        self._start_bytes = done
        size = f"{total:,} bytes" if total is not None else "size unknown"
        self._console.print(f"downloading {name} ({size})", highlight=False)

    def advance(self, n: int) -> None:
        """Print a line at most every few seconds."""
        self._done += n
        now = time.monotonic()
        if now - self._last >= _PLAIN_EVERY_SECONDS:
            self._last = now
            self._console.print(f"  {self._name}: {self._line(now)}", highlight=False)

    def finish(self) -> None:
        """Say the file is done."""
        if self._name:
            self._console.print(f"  {self._name}: done, {self._line(time.monotonic())}", highlight=False)
        self._name = ""

    def note(self, message: str) -> None:
        """Print the message."""
        self._console.print(message, highlight=False)

    def _line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-6)
        speed = (self._done - self._start_bytes) / elapsed
        text = f"{self._done:,}" + (f" of {self._total:,}" if self._total else "") + " bytes"
        if self._total:
            text += f" ({100 * self._done / self._total:.0f}%)"
        text += f", {speed / 1e6:.1f} MB/s"
        if self._total and speed > 0:
            text += f", {max(self._total - self._done, 0) / speed:.0f}s left"
        return text


class QuietProgress(SilentProgress):
    """Silent, as a context manager like the others."""

    def __enter__(self) -> QuietProgress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


def progress_for(console: Console, *, quiet: bool) -> RichProgress | PlainProgress | QuietProgress:
    """The sink that suits where stderr goes."""
    if quiet:
        return QuietProgress()
    return RichProgress(console) if console.is_terminal else PlainProgress(console)


__all__ = ["PlainProgress", "ProgressSink", "QuietProgress", "RichProgress", "progress_for"]
