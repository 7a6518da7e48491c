"""The job state machine allows exactly the lifecycle the API documents."""

from __future__ import annotations

import pytest

from dreamforge.api.schemas import JobStatus
from dreamforge.jobs.state import IllegalTransition, check_transition


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("queued", "running"),
        ("running", "succeeded"),
        ("running", "failed"),
        ("running", "queued"),
        ("queued", "failed"),
    ],
)
def test_allowed(current: str, target: str) -> None:
    check_transition(current, JobStatus(target))


@pytest.mark.parametrize(
    ("current", "target"),
    [("succeeded", "running"), ("failed", "queued"), ("queued", "succeeded"), ("succeeded", "failed")],
)
def test_forbidden(current: str, target: str) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(current, JobStatus(target))
