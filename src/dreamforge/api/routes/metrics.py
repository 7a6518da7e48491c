"""`/metrics`: this process's Prometheus metrics, plus the service's queue depth from the database.

Outside `/v1`, needs no API key and is left out of the OpenAPI schema: it is for the scraper, not for
clients. Restrict who reaches it at the network (a NetworkPolicy, the ingress), as for `/readyz`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from dreamforge.api.deps import RuntimeDep
from dreamforge.observability.metrics import QueueDepthCollector, exposition

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, runtime: RuntimeDep) -> Response:
    """Prometheus text format (OpenMetrics when the scraper asks for it)."""
    # The queue depth is a database read: off the event loop, like every other one.
    body, content_type = await run_in_threadpool(
        exposition, request.headers.get("accept", ""), [QueueDepthCollector(runtime.sessions)]
    )
    return Response(body, headers={"Content-Type": content_type})
