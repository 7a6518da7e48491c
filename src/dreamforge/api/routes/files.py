"""`/v1/files/{key}`: artifact bytes from the local store, behind signed, expiring URLs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from dreamforge.api.deps import RuntimeDep
from dreamforge.api.errors import ApiError, not_found
from dreamforge.api.schemas import ErrorResponse
from dreamforge.storage.base import CONTENT_TYPES
from dreamforge.storage.local import LocalArtifactStore
from dreamforge.storage.signing import SignatureError, verify

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
    if not isinstance(store, LocalArtifactStore):
        raise not_found("file", key)
    try:
        verify(key, expires, sig, runtime.settings.url_signing_key)
    except SignatureError as exc:
        raise ApiError(403, exc.code, str(exc), {"key": key}) from None
    try:
        data = store.get(key)
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
