"""The polled reads' short way (`api.polled`) answers exactly as the routes do, refusals included."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import register_tiny
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dreamforge.accounts.service import issue_key, revoke_key
from dreamforge.api.app import create_app
from dreamforge.api.polled import PolledReadsMiddleware
from dreamforge.api.schemas import JobCreateRequest
from dreamforge.config import Settings
from dreamforge.db.session import POLL_READ_CONNECTIONS, open_poll_pool, transaction
from dreamforge.jobs.service import create_job
from dreamforge.runtime import Runtime, build_runtime


def _app(settings: Settings, runtime: Runtime, *, short_way: bool) -> FastAPI:
    # No lifespan: the runtime is shared and never started, so the job below stays queued.
    app = create_app(settings, runtime)
    if not short_way:
        app.user_middleware = [m for m in app.user_middleware if m.cls != PolledReadsMiddleware]  # type: ignore[comparison-overlap]
    app.state.runtime = runtime
    return app


@pytest.fixture
def clients(tmp_path: Path, tiny_model_dir: Path) -> Iterator[tuple[TestClient, TestClient, dict[str, Any]]]:
    """(short way, routes only, {job, owner's key, other key}) over one database."""
    settings = Settings(data_dir=tmp_path, auth="required", signing_secret="polled-secret")
    register_tiny(settings.database_url, tiny_model_dir)
    runtime = build_runtime(settings)
    try:
        with transaction(runtime.sessions) as s:
            owner, owner_key = issue_key(s, settings.url_signing_key, name="owner")
            _, other_key = issue_key(s, settings.url_signing_key, name="other")
            request = JobCreateRequest(type="generate", prompt="a lighthouse", width=64, height=64)
            job, _ = create_job(s, request, None, providers=runtime.providers, owner=owner.id)
        facts = {"job": str(job.id), "owner": owner_key, "other": other_key}
        fast = TestClient(_app(settings, runtime, short_way=True), raise_server_exceptions=False)
        plain = TestClient(_app(settings, runtime, short_way=False), raise_server_exceptions=False)
        yield fast, plain, facts
    finally:
        runtime.close()


def _seen(client: TestClient, path: str, key: str | None) -> tuple[int, str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    answer = client.get(path, headers=headers)
    body = answer.json()
    if isinstance(body, dict):
        body.pop("correlation_id", None)  # a fresh request id per request
    return answer.status_code, answer.headers["content-type"], body


def test_every_poll_is_answered_as_the_route_answers_it(
    clients: tuple[TestClient, TestClient, dict[str, Any]],
) -> None:
    fast, plain, facts = clients
    job, owner, other = facts["job"], facts["owner"], facts["other"]
    cases = [
        (f"/v1/jobs/{job}", owner, 200),
        (f"/v1/jobs/{job}/progress", owner, 200),
        (f"/v1/jobs/{job.upper()}", owner, 200),
        (f"/v1/jobs/{job}?verbose=1", owner, 200),
        (f"/v1/jobs/{job.replace('-', '')}", owner, 200),  # pydantic's spelling: the route's to judge
        (f"/v1/jobs/{job}", other, 404),  # another key's job is as good as unknown
        (f"/v1/jobs/{job}/progress", None, 401),
        (f"/v1/jobs/{job}", "df_live_not-a-key", 401),
        (f"/v1/jobs/{uuid.uuid4()}", owner, 404),
        ("/v1/jobs/not-a-uuid/progress", owner, 422),
    ]
    for path, key, status in cases:
        seen = _seen(fast, path, key)
        assert seen == _seen(plain, path, key), path
        assert seen[0] == status, (path, seen)
    status, _, body = _seen(fast, f"/v1/jobs/{job}", owner)
    assert (body["id"], body["status"]) == (job, "queued")


def test_polls_served_the_short_way_are_counted_under_their_route(
    clients: tuple[TestClient, TestClient, dict[str, Any]],
) -> None:
    fast, _, facts = clients
    for path in (f"/v1/jobs/{facts['job']}", f"/v1/jobs/{facts['job']}/progress"):
        assert fast.get(path, headers={"Authorization": f"Bearer {facts['owner']}"}).status_code == 200
        answer = fast.get(path, headers={"X-Request-Id": "poll-1", "X-API-Key": facts["owner"]})
        assert answer.headers["x-request-id"] == "poll-1"
    metrics = fast.get("/metrics").text
    for route in ("/v1/jobs/{id}", "/v1/jobs/{id}/progress"):
        line = f'dreamforge_http_responses_total{{method="GET",route="{route}",status="200"}}'
        assert line in metrics, route


@pytest.fixture
def on_postgres(
    tmp_path: Path, tiny_model_dir: Path, pg_url: str
) -> Iterator[tuple[Runtime, dict[str, Any]]]:
    """A runtime on a fresh Postgres database: a queued job, a running job that upscales (its step
    statuses come from its items), and the keys of the owner, a stranger and a revoked one."""
    settings = Settings(
        data_dir=tmp_path, db_url=pg_url, auth="required", signing_secret="polled-secret", _env_file=None
    )
    register_tiny(pg_url, tiny_model_dir)
    runtime = build_runtime(settings)
    try:
        with transaction(runtime.sessions) as s:
            owner, owner_key = issue_key(s, settings.url_signing_key, name="owner")
            _, other_key = issue_key(s, settings.url_signing_key, name="other")
            gone, gone_key = issue_key(s, settings.url_signing_key, name="gone")
            revoke_key(s, gone)
            request = JobCreateRequest(type="generate", prompt="a lighthouse", width=64, height=64, count=2)
            queued, _ = create_job(s, request, None, providers=runtime.providers, owner=owner.id)
            running, _ = create_job(s, request, None, providers=runtime.providers, owner=owner.id)
            running.status = "running"
            running.params = {**running.params, "upscale": {"scale": 2}}
            running.items[0].status = "succeeded"
            running.items[1].status, running.items[1].stage = "running", "denoise"
        facts = {
            "queued": str(queued.id),
            "running": str(running.id),
            "owner": owner_key,
            "other": other_key,
            "revoked": gone_key,
        }
        yield runtime, facts
    finally:
        runtime.close()


async def _answer(client: Any, path: str, key: str | None) -> tuple[int, str, Any]:
    answer = await client.get(path, headers={"Authorization": f"Bearer {key}"} if key else {})
    body = answer.json()
    if isinstance(body, dict):
        body.pop("correlation_id", None)  # a fresh request id per request
    return answer.status_code, answer.headers["content-type"], body


def test_on_postgres_a_poll_on_the_loop_is_answered_as_on_a_worker_thread(
    on_postgres: tuple[Runtime, dict[str, Any]],
) -> None:
    import asyncio

    import httpx

    runtime, facts = on_postgres
    queued, running, owner = facts["queued"], facts["running"], facts["owner"]
    cases = [
        (f"/v1/jobs/{queued}", owner, 200),
        (f"/v1/jobs/{queued}/progress", owner, 200),
        (f"/v1/jobs/{running}", owner, 200),
        (f"/v1/jobs/{running}/progress", owner, 200),
        (f"/v1/jobs/{running}", facts["other"], 404),
        (f"/v1/jobs/{queued}/progress", None, 401),
        (f"/v1/jobs/{queued}", "df_live_not-a-key", 401),
        (f"/v1/jobs/{queued}", facts["revoked"], 401),
        (f"/v1/jobs/{uuid.uuid4()}/progress", owner, 404),
        ("/v1/jobs/not-a-uuid", owner, 422),
    ]

    async def check() -> dict[str, Any]:
        pool = await open_poll_pool(runtime.settings.database_url)
        assert pool is not None
        on_loop = _app(runtime.settings, runtime, short_way=True)
        on_loop.state.poll_pool = pool
        on_thread = _app(runtime.settings, runtime, short_way=True)
        try:
            async with (
                httpx.AsyncClient(transport=httpx.ASGITransport(app=on_loop), base_url="http://api") as loop,
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=on_thread), base_url="http://api"
                ) as thread,
            ):
                for path, key, status in cases:
                    seen = await _answer(loop, path, key)
                    assert seen == await _answer(thread, path, key), path
                    assert seen[0] == status, (path, seen)
                steps = (await _answer(loop, f"/v1/jobs/{running}", owner))[2]["steps"]
                # A crowd: every poll answered, on the pool's few connections.
                statuses = await asyncio.gather(
                    *(loop.get(f"/v1/jobs/{queued}", headers={"X-API-Key": owner}) for _ in range(64))
                )
                assert [r.status_code for r in statuses] == [200] * 64
                return {"steps": steps, "pool": pool.get_stats()}
        finally:
            await pool.close()

    seen = asyncio.run(check())
    # From the items: one of them is already upscaling, the other still denoising.
    assert seen["steps"] == [
        {"name": "generate", "status": "running"},
        {"name": "upscale", "status": "running"},
    ]
    assert seen["pool"]["pool_max"] == POLL_READ_CONNECTIONS
    assert seen["pool"].get("connections_num", 0) <= POLL_READ_CONNECTIONS


def test_a_crowd_of_pollers_on_postgres_shares_a_few_kept_connections(
    tmp_path: Path, tiny_model_dir: Path, pg_url: str
) -> None:
    # Before, 32 pollers at once opened connections beyond the pool's and closed each after one
    # read: a Postgres backend started and stopped per poll, and a third of the throughput lost.
    import asyncio

    import httpx
    from sqlalchemy import event

    settings = Settings(data_dir=tmp_path, db_url=pg_url, signing_secret="polled-secret", _env_file=None)
    register_tiny(pg_url, tiny_model_dir)
    runtime = build_runtime(settings)
    try:
        assert runtime.poll_reads is not None
        opened: list[object] = []
        event.listen(runtime.poll_reads, "connect", lambda conn, record: opened.append(conn))
        with transaction(runtime.sessions) as s:
            request = JobCreateRequest(type="generate", prompt="a lighthouse", width=64, height=64)
            job, _ = create_job(s, request, None, providers=runtime.providers)
        app = _app(settings, runtime, short_way=True)

        async def crowd() -> list[int]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:

                async def poller(n: int) -> list[int]:
                    path = f"/v1/jobs/{job.id}" + ("/progress" if n % 2 else "")
                    return [(await client.get(path)).status_code for _ in range(5)]

                answers = await asyncio.gather(*(poller(n) for n in range(32)))
            return [status for statuses in answers for status in statuses]

        assert asyncio.run(crowd()) == [200] * 160
        assert 1 <= len(opened) <= POLL_READ_CONNECTIONS
    finally:
        runtime.close()
