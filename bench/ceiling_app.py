"""The ceiling of the API throughput benchmark: a bare FastAPI endpoint returning a small JSON body,
served by the same uvicorn build and settings as `dreamforge serve`.

Two floors of `POST /v1/jobs` too, for the doc: what a POST costs before any of our own work.
`POST /floor/validate` only validates the body with the API's own request model (on the event loop);
`POST /floor/publish` also publishes one Celery message, as every accepted distributed job does, on a
worker thread as the real route runs (only when FLOOR_REDIS_URL and FLOOR_QUEUE are set).

    python bench/ceiling_app.py PORT
"""

from __future__ import annotations

import os
import sys
import uuid

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from dreamforge.api.schemas import JobCreateRequest

app = FastAPI()


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


if __name__ == "__main__":
    # As `dreamforge serve` runs it: info level, so each request writes its access line too.
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="info")
