"""The progress writer reads a running job's cancel flag off the render thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import pytest

from dreamforge.worker.progress import ProgressWriter, StepReport


class Flag:
    """A cancel flag in a "database": counts its reads, and can fail them."""

    def __init__(self) -> None:
        self.set = threading.Event()
        self.reads = 0
        self.writes = 0
        self.failure: Exception | None = None

    def read(self) -> bool:
        self.reads += 1
        if self.failure is not None:
            raise self.failure
        return self.set.is_set()

    def write(self, reports: Mapping[int, StepReport]) -> bool:
        self.writes += 1
        return self.set.is_set()


def wait_for(condition: threading.Event, seconds: float = 5.0) -> bool:
    return condition.wait(seconds)


def test_a_cancel_reaches_a_render_that_reports_nothing() -> None:
    flag = Flag()
    writer = ProgressWriter(flag.write, "progress-test", poll=flag.read, poll_seconds=0.02)
    try:
        time.sleep(0.1)
        assert not writer.canceled.is_set()
        assert flag.reads >= 2, "the flag is read while no progress is written"
        flag.set.set()
        started = time.monotonic()
        assert wait_for(writer.canceled)
        assert time.monotonic() - started < 1.0
        reads = flag.reads
        time.sleep(0.1)
        assert flag.reads == reads, "once canceled, the flag is not read again"
    finally:
        writer.close()


def test_writes_carry_the_read_so_frequent_progress_makes_no_extra_reads() -> None:
    flag = Flag()
    writer = ProgressWriter(flag.write, "progress-test", poll=flag.read, poll_seconds=0.5)
    try:
        for step in range(20):
            writer.report({0: StepReport("denoise", step, 20, step / 20)})
            writer.flush()
            time.sleep(0.01)
        assert flag.writes >= 1
        assert flag.reads <= 1, "only the read made as the writer starts"
    finally:
        writer.close()


def test_a_failed_read_is_the_jobs_failure_at_its_next_check() -> None:
    flag = Flag()
    flag.failure = ConnectionError("database went away")
    writer = ProgressWriter(flag.write, "progress-test", poll=flag.read, poll_seconds=0.01)
    try:
        deadline = time.monotonic() + 5
        while flag.reads == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        with pytest.raises(ConnectionError, match="database went away"):
            writer.raise_failure()
        with pytest.raises(ConnectionError):
            writer.report({0: StepReport("denoise", 1, 2, 0.5)})
    finally:
        writer.close()
