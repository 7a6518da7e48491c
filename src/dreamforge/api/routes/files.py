"""`/v1/files/{key}`: artifact bytes from a store the API serves itself, behind signed, expiring URLs.

Mounted only when the process's store serves files (local disk); S3 URLs point at S3.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from dreamforge.api.deps import RuntimeDep
from dreamforge.api.errors import not_found
from dreamforge.api.schemas import ErrorResponse
from dreamforge.storage.base import CONTENT_TYPES, FileServingStore

router = APIRouter(prefix="/files", tags=["artifacts"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "The artifact's bytes"},
    403: {"model": ErrorResponse, "description": "Signature invalid or URL expired"},
    404: {"model": ErrorResponse, "description": "Not found"},
    422: {"model": ErrorResponse, "description": "Validation error"},
}


@router.get(
    "/{key:path}",
    operation_id="getArtifactFile",
    summary="Download an artifact by signed URL",
    response_class=Response,
    responses=_RESPONSES,
)
def get_file(
    key: str,
    runtime: RuntimeDep,
    expires: Annotated[int, Query(description="UNIX time the URL stops working")],
    sig: Annotated[str, Query(description="HMAC-SHA256 signature of key and expiry")],
) -> Response:
    """Serve an artifact if the URL's signature is valid and it has not expired."""
    store = runtime.store
    if not isinstance(store, FileServingStore):
        raise not_found("file", key)
    try:
        data = store.open_signed(key, expires, sig)
    except KeyError:
        raise not_found("file", key) from None
    ext = key.rsplit(".", 1)[-1]
    return Response(
        content=data,
        media_type=CONTENT_TYPES.get(ext, "application/octet-stream"),
        headers={
            "Cache-Control": "private, max-age=60",
            "Content-Disposition": f'inline; filename="{key.rsplit("/", 1)[-1]}"',
        },
    )
