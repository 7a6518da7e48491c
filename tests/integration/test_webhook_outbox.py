"""The outbox on both databases: a delivery exists exactly when the event that causes it committed,
once per event, and only then is it handed on to be sent."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import register_tiny, stage_job
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dreamforge.api.schemas import JobStatus
from dreamforge.config import Settings
from dreamforge.db.session import create_db_engine, make_session_factory, on_commits, transaction
from dreamforge.db.tables import Job, WebhookDelivery
from dreamforge.jobs.lifecycle import finish_job
from dreamforge.webhooks.outbox import DELIVER, WebhookEvent, stage_delivery

HOOK = {"webhook": "https://hooks.example.com/df", "webhook_events_filter": ["start", "completed"]}


@pytest.fixture(params=["sqlite", "postgres"])
def sessions(
    request: pytest.FixtureRequest, settings: Settings, tiny_model_dir: Path
) -> Iterator[sessionmaker[Session]]:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else settings.database_url
    register_tiny(url, tiny_model_dir)
    engine = create_db_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


def _count(sessions: sessionmaker[Session], job_id: uuid.UUID) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).where(WebhookDelivery.job_id == job_id)) or 0)


def test_a_delivery_commits_with_its_event_and_is_handed_on_only_after_the_commit(
    sessions: sessionmaker[Session],
) -> None:
    handed: list[uuid.UUID] = []
    on_commits(sessions, DELIVER, handed.append)
    job_id = stage_job(sessions, **HOOK)

    def fail_after_finishing() -> None:
        with transaction(sessions) as s:
            job = s.get(Job, job_id)
            assert job is not None
            finish_job(s, job, JobStatus.canceled)
            raise RuntimeError("the transaction fails after the event was staged")

    with pytest.raises(RuntimeError):
        fail_after_finishing()
    assert _count(sessions, job_id) == 0 and handed == []

    with transaction(sessions) as s:
        job = s.get(Job, job_id)
        assert job is not None
        finish_job(s, job, JobStatus.canceled)
        assert handed == []  # not before the commit
    with sessions() as s:
        [row] = s.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).all()
    assert handed == [row.id]
    assert (row.event, row.status, row.url, row.attempts) == ("completed", "pending", HOOK["webhook"], 0)


def test_each_event_is_delivered_once_and_only_the_events_asked_for(sessions: sessionmaker[Session]) -> None:
    job_id = stage_job(sessions, **HOOK)
    plain = stage_job(sessions)
    for _ in range(2):  # a re-run after a crash starts the job again: the receiver hears of it once
        with transaction(sessions) as s:
            job = s.get(Job, job_id)
            assert job is not None
            stage_delivery(s, job, WebhookEvent.start)
            stage_delivery(s, job, WebhookEvent.item, 0)  # not in the filter
            other = s.get(Job, plain)
            assert other is not None
            stage_delivery(s, other, WebhookEvent.start)  # no webhook at all
    assert _count(sessions, job_id) == 1 and _count(sessions, plain) == 0
