"""The per-phase timings a job run records: one log line at its end and the phase histogram."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import register_tiny, stage_job
from prometheus_client import REGISTRY

from dreamforge.api.schemas import JobStatus
from dreamforge.config import Settings
from dreamforge.db.session import create_db_engine, make_session_factory
from dreamforge.events.repository import log_events
from dreamforge.observability.metrics import JOB_PHASES
from dreamforge.runtime import build_store, engine_providers
from dreamforge.worker.context import WorkerContext
from dreamforge.worker.runner import run_job

LINE = re.compile(r"^timings \(ms\): (.*)$")
# The phases' rounding (0.1 ms each) and the clock reads between them.
MARGIN_MS = 5.0


@pytest.fixture(params=["sqlite", "postgres"])
def ctx(request: pytest.FixtureRequest, settings: Settings, tiny_model_dir: Path) -> Iterator[WorkerContext]:
    """A worker context with the SDXL engine on the tiny model, on SQLite and on Postgres."""
    if request.param == "postgres":
        settings = settings.model_copy(update={"db_url": request.getfixturevalue("pg_url")})
    register_tiny(settings.database_url, tiny_model_dir)
    db = create_db_engine(settings.database_url)
    yield WorkerContext(
        settings=settings,
        sessions=make_session_factory(db),
        store=build_store(settings),
        engines=engine_providers(settings),
    )
    db.dispose()


def _timings(ctx: WorkerContext, job_id: uuid.UUID) -> dict[str, float]:
    with ctx.sessions() as s:
        messages = [e.data["message"] for e in log_events(s, job_id)]
    lines = [m for m in messages if LINE.match(m)]
    assert len(lines) == 1, messages
    # Logged with the final status, just before its own line.
    assert messages.index(lines[0]) == len(messages) - 2 and messages[-1].startswith("job succeeded")
    match = LINE.match(lines[0])
    assert match is not None
    fields = dict(pair.split("=") for pair in match.group(1).split())
    return {name: float(value) for name, value in fields.items()}


def _phase_count(phase: str) -> float:
    return REGISTRY.get_sample_value("dreamforge_job_phase_seconds_count", {"phase": phase}) or 0.0


def _phase_sum(phase: str) -> float:
    return REGISTRY.get_sample_value("dreamforge_job_phase_seconds_sum", {"phase": phase}) or 0.0


def test_a_job_logs_each_phase_once_and_they_fit_in_its_total(ctx: WorkerContext) -> None:
    before = {phase: _phase_count(phase) for phase in JOB_PHASES}
    # Two jobs: the first also loads the model; the second runs warm, as most jobs do.
    for count in (1, 2):
        sums = {phase: _phase_sum(phase) for phase in JOB_PHASES}
        job_id = stage_job(ctx.sessions, prompt="a green cone", steps=3, count=count)
        assert run_job(ctx, job_id) is JobStatus.succeeded
        timings = _timings(ctx, job_id)
        assert list(timings) == list(JOB_PHASES)
        assert all(value >= 0 for value in timings.values()), timings
        for phase in ("claim", "model", "denoise", "encode", "metadata", "store", "commits", "total"):
            # Timed, unrounded: the line's 0.1 ms shows a fast `metadata` (tens of microseconds) as 0.0.
            assert _phase_sum(phase) > sums[phase], (phase, timings)
        for phase in ("denoise", "encode", "total"):
            assert timings[phase] > 0, (phase, timings)
        assert timings["stages"] == 0
        in_run = sum(value for name, value in timings.items() if name not in ("queue_wait", "total"))
        assert in_run <= timings["total"] + MARGIN_MS, timings
    assert all(_phase_count(phase) == before[phase] + 2 for phase in JOB_PHASES)
