"""The ceiling of the API throughput benchmark: a bare FastAPI endpoint returning a small JSON body,
served by the same uvicorn build and settings as `dreamforge serve`.

Floors too, for the doc: what a route costs before any of our own work.
- `POST /floor/validate` only validates the body with the API's own request model (on the event loop).
- `POST /floor/publish` also publishes one Celery message, as every accepted distributed job does, on
  a worker thread as the real route runs (only when FLOOR_REDIS_URL and FLOOR_QUEUE are set).
- Two on Postgres (only when FLOOR_DB_URL, a scratch database, and FLOOR_ROW, the row to read, are
  set), on the event loop through an async psycopg pool sized and set up as the API's polled-read pool
  (`db.session.open_poll_pool`): `GET /floor/select/{id}` reads one small row by its key, the least a
  polled read of a job stored in Postgres does; `POST /floor/insert` validates the body and inserts it
  as one row in one autocommitted transaction (a durable commit, Postgres' default), the least a POST
  that keeps an accepted job does before it answers, whatever hands the job to a worker afterwards.
- The SSE fan-out's floor: `GET /floor/stream` is an sse-starlette stream, as the API's; every `POST
  /floor/fire?kind=...` sends all open streams one more frame (ids from 2; the first frame, id 1, comes
  as a stream opens), a job event's size, encoded once; a `done` frame ends them. No database, no
  render: the least a fan-out to that many streams costs with this stack on this machine.

    python bench/ceiling_app.py PORT
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from dreamforge.api.schemas import JobCreateRequest

FLOOR_DB_URL = os.environ.get("FLOOR_DB_URL")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if not FLOOR_DB_URL:
        yield
        return
    from psycopg_pool import AsyncConnectionPool

    from dreamforge.db.session import POLL_POOL_TIMEOUT_SECONDS, POLL_READ_CONNECTIONS

    async with AsyncConnectionPool(
        FLOOR_DB_URL,
        min_size=POLL_READ_CONNECTIONS,
        max_size=POLL_READ_CONNECTIONS,
        kwargs={"autocommit": True},
        timeout=POLL_POOL_TIMEOUT_SECONDS,
        open=False,
    ) as pool:
        async with pool.connection() as connection:
            await connection.execute(
                "CREATE TABLE IF NOT EXISTS floor_jobs (id uuid PRIMARY KEY, status text NOT NULL,"
                " body jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
            )
            await connection.execute(
                "INSERT INTO floor_jobs (id, status, body) VALUES (%s, 'running', '{}')",
                (os.environ["FLOOR_ROW"],),
            )
        app.state.pool = pool
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/ping")
async def ping() -> dict[str, object]:
    return {
        "id": "6a1f0c9e-5b7d-4d5e-9a61-0f2b9d8c7e11",
        "status": "running",
        "summary": {"count": 1, "completed": 0},
    }


def _accepted(job_id: str) -> JSONResponse:
    return JSONResponse(status_code=202, content={"job": {"id": job_id, "status": "queued"}})


@app.post("/floor/validate", status_code=202)
async def validate(body: JobCreateRequest) -> JSONResponse:
    return _accepted(str(uuid.uuid4()))


if os.environ.get("FLOOR_REDIS_URL") and os.environ.get("FLOOR_QUEUE"):
    from dreamforge.broker.celery import TASK_NAME, make_celery
    from dreamforge.config import Settings

    queue = os.environ["FLOOR_QUEUE"]
    # The API's own Celery configuration (publish retries, broker timeouts).
    celery = make_celery(Settings(redis_url=os.environ["FLOOR_REDIS_URL"], queue=queue))

    @app.post("/floor/publish", status_code=202)
    def publish(body: JobCreateRequest) -> JSONResponse:
        job_id = str(uuid.uuid4())
        celery.send_task(TASK_NAME, args=[job_id], queue=queue)
        return _accepted(job_id)


def _frame(event_id: int, kind: str) -> bytes:
    data = (
        '{"job_id":"6a1f0c9e-5b7d-4d5e-9a61-0f2b9d8c7e11","ts":"2026-12-04T21:00:00.000000+00:00",'
        f'"step":{event_id},"total":60,"item_index":0}}'
    )
    return ServerSentEvent(data=data, event=kind, id=str(event_id)).encode()


class _Fanout:
    """The frames sent so far, and the event that wakes every stream for the next one."""

    def __init__(self) -> None:
        self.frames = [_frame(1, "queued")]
        self.done = False
        self.changed = asyncio.Event()

    def fire(self, kind: str) -> int:
        self.frames.append(_frame(len(self.frames) + 1, kind))
        self.done = kind == "done"
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()
        return len(self.frames)


fanout = _Fanout()


@app.get("/floor/stream")
async def stream() -> EventSourceResponse:
    async def frames() -> AsyncIterator[bytes]:
        sent = 0
        while True:
            changed = fanout.changed
            if sent < len(fanout.frames):
                batch, sent = fanout.frames[sent:], len(fanout.frames)
                yield b"".join(batch)
                if fanout.done and sent == len(fanout.frames):
                    return
            else:
                await changed.wait()

    # The API's ping interval (DF_SSE_PING_SECONDS' default): no ping falls inside a measurement.
    return EventSourceResponse(frames(), ping=15)


@app.post("/floor/fire", status_code=202)
async def fire(kind: str = "progress") -> dict[str, int]:
    return {"id": fanout.fire(kind)}


if FLOOR_DB_URL:

    @app.get("/floor/select/{job_id}")
    async def select(job_id: uuid.UUID) -> JSONResponse:
        pool: Any = app.state.pool
        async with pool.connection() as connection:
            cursor = await connection.execute("SELECT id, status FROM floor_jobs WHERE id = %s", (job_id,))
            row = await cursor.fetchone()
        return JSONResponse({"id": str(row[0]), "status": row[1], "summary": {"count": 1, "completed": 0}})

    @app.post("/floor/insert", status_code=202)
    async def insert(body: JobCreateRequest) -> JSONResponse:
        pool: Any = app.state.pool
        job_id = str(uuid.uuid4())
        async with pool.connection() as connection:
            await connection.execute(
                "INSERT INTO floor_jobs (id, status, body) VALUES (%s, 'queued', %s)",
                (job_id, body.model_dump_json()),
            )
        return _accepted(job_id)


if __name__ == "__main__":
    # As `dreamforge serve` runs it: info level, so each request writes its access line too.
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="info")
