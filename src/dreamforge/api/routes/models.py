"""`/v1/models`: the installed checkpoints jobs can use."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from dreamforge.api.deps import SessionDep, get_principal
from dreamforge.api.errors import INVALID, NOT_FOUND, UNAUTHORIZED, UNAVAILABLE, not_found
from dreamforge.api.schemas import ModelDescriptor, ModelListResponse
from dreamforge.api.views import model_descriptor, model_summary
from dreamforge.registry import repository as models_repo

# Any valid key may list models (with DF_AUTH=required); models are the service's, not a key's.
router = APIRouter(
    prefix="/models", tags=["models"], dependencies=[Depends(get_principal)], responses=UNAUTHORIZED
)


@router.get(
    "",
    response_model=ModelListResponse,
    operation_id="listModels",
    summary="List enabled models",
    responses={**INVALID, **UNAVAILABLE},
)
def list_models(
    session: SessionDep,
    enabled: Annotated[bool, Query(description="true: enabled models; false: disabled ones")] = True,
) -> ModelListResponse:
    """Installed models, newest first; enabled ones unless `enabled=false`."""
    return ModelListResponse(
        models=[model_summary(m) for m in models_repo.list_models(session, enabled=enabled)]
    )


@router.get(
    "/{id}",
    response_model=ModelDescriptor,
    operation_id="getModel",
    summary="Get model descriptor",
    responses={**NOT_FOUND, **INVALID, **UNAVAILABLE},
)
def get_model(id: uuid.UUID, session: SessionDep) -> ModelDescriptor:
    """One model with its capabilities and provenance."""
    row = models_repo.get_model(session, id)
    if row is None:
        raise not_found("model", id)
    return model_descriptor(row)
