"""The FastAPI application: routers under `/v1`, error mapping, request ids and lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from dreamforge import __version__
from dreamforge.api.errors import install_error_handlers
from dreamforge.api.middleware import RequestIdMiddleware, RequestLimitsMiddleware
from dreamforge.api.polled import PolledReadsMiddleware
from dreamforge.api.routes import files, health, jobs, metrics, models, webhooks
from dreamforge.config import Settings
from dreamforge.db.session import open_poll_pool
from dreamforge.observability.http import HttpMetricsMiddleware
from dreamforge.runtime import Runtime, build_runtime, store_serves_files

DESCRIPTION = (
    "API-first media generation service. Create a job, follow it with the SSE progress stream, "
    "and fetch its images (recipe embedded) through expiring URLs. Every error body is an ErrorResponse."
)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Build the app; without `runtime` it wires one from `settings` on startup."""
    settings = settings or (runtime.settings if runtime is not None else Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = runtime if runtime is not None else await run_in_threadpool(build_runtime, settings)
        app.state.runtime = rt
        # Opened here, on the loop that serves the app: its connections belong to this loop.
        app.state.poll_pool = await open_poll_pool(rt.settings.database_url)
        await run_in_threadpool(rt.start)
        try:
            yield
        finally:
            if app.state.poll_pool is not None:
                await app.state.poll_pool.close()
            await run_in_threadpool(rt.close)

    app = FastAPI(
        title="Dream Forge API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        servers=[{"url": "/", "description": "This server; paths carry the /v1 prefix"}],
    )
    install_error_handlers(app)
    # Innermost of ours, so the limits, the request id and the metrics see the polls it serves.
    app.add_middleware(
        PolledReadsMiddleware,
        routes=[("/v1/jobs/{id}", jobs.get), ("/v1/jobs/{id}/progress", jobs.progress)],
    )
    # Added before the request-id middleware, so it runs inside it: refusals carry the request id.
    app.add_middleware(
        RequestLimitsMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_header_bytes=settings.max_header_bytes,
    )
    app.add_middleware(RequestIdMiddleware)
    # Outermost: it times the whole request and sees the status of the last-resort 500 too.
    app.add_middleware(HttpMetricsMiddleware)
    app.include_router(jobs.router, prefix="/v1")
    app.include_router(models.router, prefix="/v1")
    # Only a store whose signed URLs point back at this API needs `/v1/files`; S3 URLs go to S3.
    serves_files = runtime.serves_files if runtime is not None else store_serves_files(settings)
    if serves_files:
        app.include_router(files.router, prefix="/v1")
    app.include_router(health.router)
    app.include_router(metrics.router)
    # Documentation only: the callback receivers implement (OpenAPI 3.1 `webhooks`).
    app.webhooks.include_router(webhooks.router)
    webhooks.with_webhook_payload(app)
    return app
