"""The job state machine, the one place that says which status changes are legal."""

from __future__ import annotations

from enum import StrEnum

from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError


class JobStatus(StrEnum):
    """Lifecycle states of a job."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"


# A job in one of these has ended: it never runs again and its `done` event has been sent.
TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.canceled})

# running -> queued is the crash path: a job whose worker died goes back to the queue.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.failed, JobStatus.canceled}),
    JobStatus.running: frozenset(
        {JobStatus.succeeded, JobStatus.failed, JobStatus.queued, JobStatus.canceled}
    ),
    JobStatus.succeeded: frozenset(),
    JobStatus.failed: frozenset(),
    JobStatus.canceled: frozenset(),
}


class IllegalTransition(DreamForgeError):
    """A status change the state machine forbids."""

    code = ErrorCode.illegal_transition
    status = 409

    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"job cannot go from {current} to {target}", details={"from": current, "to": target})
        self.current = current
        self.target = target


def check_transition(current: str, target: JobStatus) -> None:
    """Raise `IllegalTransition` unless `current -> target` is allowed."""
    if target not in TRANSITIONS[JobStatus(current)]:
        raise IllegalTransition(current, target)
