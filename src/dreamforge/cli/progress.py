"""Progress on stderr, for downloads and jobs: Rich bars on a terminal, plain lines otherwise."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from dreamforge.client.events import JobEvent
from dreamforge.events.kinds import EventKind
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


# Above this many items, finished items' bars are hidden so the display stays a screenful.
_ALL_ITEM_BARS = 10


class JobProgressView(Protocol):
    """Shows a job's events as they arrive."""

    def __enter__(self) -> JobProgressView: ...

    def __exit__(self, *exc: object) -> None: ...

    def event(self, event: JobEvent) -> None:
        """Show one event."""


def _log_line(event: JobEvent) -> str:
    # Messages about an item already name it ("item 0: stored ...").
    return f"{event.data.get('level', 'info')}: {event.data.get('message', '')}"


class JobBars:
    """An overall bar plus one bar per item, log lines printed above them."""

    def __init__(self, console: Console, job_id: str, count: int) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=None),
            TaskProgressColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._count = count
        self._overall = self._progress.add_task(f"job {job_id[:8]}", total=1.0, note="")
        self._items: dict[int, TaskID] = {}
        self._stored: set[int] = set()

    def __enter__(self) -> JobBars:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def _item(self, index: int) -> TaskID:
        if index not in self._items:
            self._items[index] = self._progress.add_task(f"  item {index}", total=1.0, note="")
        return self._items[index]

    def event(self, event: JobEvent) -> None:
        """Move the bars, print logs and errors."""
        data, p = event.data, self._progress
        if event.event == EventKind.status:
            p.update(self._overall, note=data.get("status", ""))
        elif event.event == EventKind.progress:
            item = self._item(int(data["item_index"]))
            stage = data.get("stage")
            # Which stage the steps count in (denoise, upscale, refine) once there is more than one.
            where = f"{stage} " if stage and stage != "denoise" else ""
            p.update(
                item, completed=data["progress"], note=f"{where}step {data.get('step')}/{data.get('steps')}"
            )
            p.update(self._overall, completed=data.get("overall", 0.0))
        elif event.event == EventKind.artifact:
            index = int(data.get("item_index", 0))
            if (data.get("artifact") or {}).get("stage") == "base":
                return  # the item's delivered image is still to come
            self._stored.add(index)
            p.update(self._item(index), completed=1.0, note="stored", visible=self._count <= _ALL_ITEM_BARS)
        elif event.event == EventKind.log:
            p.console.print(f"[dim]{escape(_log_line(event))}[/dim]")
        elif event.event == EventKind.error:
            p.console.print(f"[red]error:[/red] [{data.get('code')}] {escape(str(data.get('message')))}")
        elif event.event == EventKind.done:
            status = data.get("status", "")
            if status == "succeeded":
                p.update(self._overall, completed=1.0)
            elif status == "canceled":
                # Not an error: the bars stop where the job stopped, and say so.
                for index, item in self._items.items():
                    if index not in self._stored:
                        p.update(item, note="canceled")
            p.update(self._overall, note=status)


class JobLines:
    """Plain lines for pipes and CI logs: status changes, log lines, progress every few seconds."""

    def __init__(self, console: Console, job_id: str) -> None:
        self._console = console
        self._job = job_id
        self._last = 0.0
        self._status: str | None = None

    def __enter__(self) -> JobLines:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _print(self, text: str) -> None:
        self._console.print(text, highlight=False, markup=False)

    def event(self, event: JobEvent) -> None:
        """Print what a person following the job needs."""
        data = event.data
        if event.event == EventKind.status:
            self._status = data.get("status")
            self._print(f"job {self._job}: {self._status}")
        elif event.event == EventKind.done:
            # The status event before `done` normally said it already; say how it ended otherwise.
            if data.get("status") != self._status:
                self._status = data.get("status")
                self._print(f"job {self._job}: {self._status}")
        elif event.event == EventKind.log:
            self._print(f"  {_log_line(event)}")
        elif event.event == EventKind.error:
            self._print(f"  error: [{data.get('code')}] {data.get('message')}")
        elif event.event == EventKind.progress:
            now = time.monotonic()
            if now - self._last >= _PLAIN_EVERY_SECONDS:
                self._last = now
                self._print(
                    f"  item {data['item_index']}: {data['progress']:.0%} "
                    f"(step {data.get('step')}/{data.get('steps')}), overall {data.get('overall', 0):.0%}"
                )


class QuietJobView:
    """Shows nothing."""

    def __enter__(self) -> QuietJobView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def event(self, event: JobEvent) -> None:
        """Ignore the event."""


def job_view_for(console: Console, job_id: str, count: int, *, quiet: bool) -> JobProgressView:
    """The job display that suits where stderr goes."""
    if quiet:
        return QuietJobView()
    return JobBars(console, job_id, count) if console.is_terminal else JobLines(console, job_id)


__all__ = [
    "JobBars",
    "JobLines",
    "JobProgressView",
    "PlainProgress",
    "ProgressSink",
    "QuietJobView",
    "QuietProgress",
    "RichProgress",
    "job_view_for",
    "progress_for",
]
