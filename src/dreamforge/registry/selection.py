"""Which installed model a job renders with."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from dreamforge.db.tables import Model
from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError
from dreamforge.registry import repository as models_repo

INSTALL_HINT = (
    "install one with `dreamforge model download <ref> --enable`, where <ref> is civitai:<version id> "
    "(EpicRealism XL is published on Civitai) or hf:<owner>/<repo>, or try the service with "
    "`dreamforge model create-tiny` (random weights: images are noise)"
)
# The default provider's own checkpoint family: an enabled model named for it is preferred.
PROVIDER_MODEL_HINT = "epicrealism"


class ModelUnavailable(DreamForgeError):
    """The requested model is unknown, disabled or not installed, or none is installed at all."""

    code = ErrorCode.model_unavailable
    status = 422

    def __init__(self, message: str, *, model_id: uuid.UUID | None, reason: str) -> None:
        details: dict[str, str] = {"field": "model_id", "reason": reason}
        if model_id is not None:
            details["model_id"] = str(model_id)
        super().__init__(
            message, code=ErrorCode.no_model_installed if reason == "none" else None, details=details
        )
        self.model_id = model_id
        self.reason = reason


def resolve_model(session: Session, model_id: uuid.UUID | None, default_name: str = "") -> Model:
    """The model for a job: `model_id`, else `DF_DEFAULT_MODEL`, else the newest enabled one.

    Without either, a model named for the default provider (`epicrealism` in its name) comes first.
    """
    if model_id is not None:
        model = models_repo.get_model(session, model_id)
        if model is None:
            raise ModelUnavailable(f"model {model_id} does not exist", model_id=model_id, reason="unknown")
        if not model.installed:
            raise ModelUnavailable(
                f"model {model_id} is not installed", model_id=model_id, reason="not_installed"
            )
        if not model.enabled:
            raise ModelUnavailable(f"model {model_id} is disabled", model_id=model_id, reason="disabled")
        return model
    if default_name:
        model = models_repo.get_model_by_name(session, default_name)
        if model is not None and model.installed and model.enabled:
            return model
    candidates = models_repo.list_models(session, enabled=True)
    if not candidates:
        raise ModelUnavailable(
            f"no model is installed and enabled; {INSTALL_HINT}", model_id=None, reason="none"
        )
    named = [m for m in candidates if PROVIDER_MODEL_HINT in m.name.lower()]
    return (named or candidates)[0]
