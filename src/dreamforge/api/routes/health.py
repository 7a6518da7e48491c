"""`/healthz` (the process is alive) and `/readyz` (its database, broker and storage answer)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dreamforge.api.deps import RuntimeDep
from dreamforge.api.errors import error_response
from dreamforge.api.schemas import ErrorResponse, HealthResponse, ReadinessResponse
from dreamforge.error_codes import ErrorCode

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, operation_id="getHealth", summary="Liveness")
async def healthz() -> HealthResponse:
    """The process is up and serving; says nothing about its dependencies."""
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=ReadinessResponse,
    operation_id="getReadiness",
    summary="Readiness",
    responses={503: {"model": ErrorResponse, "description": "A dependency is unreachable"}},
)
async def readyz(runtime: RuntimeDep) -> Any:
    """Ready when every dependency answers; otherwise 503 naming the ones that failed."""
    checks: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name, check in runtime.checks.items():
        try:
            await run_in_threadpool(check)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = "unavailable"
            failed[name] = f"{type(exc).__name__}: {exc}"[:300]
    if failed:
        log.warning("not ready: %s", failed)
        return error_response(
            503,
            ErrorCode.not_ready,
            f"unreachable: {', '.join(sorted(failed))}",
            {"checks": checks, "failed": sorted(failed), "errors": failed},
        )
    return JSONResponse(ReadinessResponse(status="ready", checks=checks).model_dump())
