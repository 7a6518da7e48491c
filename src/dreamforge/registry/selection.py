"""Which installed model a job renders with."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from dreamforge.db.tables import Model
from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError
from dreamforge.registry import repository as models_repo
from dreamforge.registry.install import CHECKPOINT_KIND, REMOTE_KIND, UPSCALER_KIND
from dreamforge.registry.remote import remote_models

INSTALL_HINT = (
    "install one with `dreamforge model download <ref> --enable`, where <ref> is civitai:<version id> "
    "(EpicRealism XL is published on Civitai) or hf:<owner>/<repo>, or try the service with "
    "`dreamforge model create-tiny` (random weights: images are noise)"
)
UPSCALER_HINT = (
    "install one with `dreamforge model download <ref> --enable`, where <ref> is hf:<owner>/<repo>#<file>"
    ".safetensors or civitai:<version id> of an ESRGAN-family upscaler (4x-UltraSharp, RealESRGAN), "
    "or try it with `dreamforge model create-tiny --kind upscaler` (random weights)"
)
# The default provider's own checkpoint family: an enabled model named for it is preferred.
PROVIDER_MODEL_HINT = "epicrealism"


class ModelUnavailable(DreamForgeError):
    """The requested model is unknown, disabled or not installed, or none is installed at all."""

    code = ErrorCode.model_unavailable
    status = 422

    def __init__(
        self,
        message: str,
        *,
        model_id: uuid.UUID | None,
        reason: str,
        field: str = "model_id",
        none_code: ErrorCode = ErrorCode.no_model_installed,
    ) -> None:
        details: dict[str, str] = {"field": field, "reason": reason}
        if model_id is not None:
            details["model_id"] = str(model_id)
        super().__init__(message, code=none_code if reason == "none" else None, details=details)
        self.model_id = model_id
        self.reason = reason


def _usable(model: Model | None, model_id: uuid.UUID, kind: str, field: str) -> Model:
    """`model` if jobs may use it as a `kind`; `ModelUnavailable` naming `field` otherwise."""
    what = {UPSCALER_KIND: "an upscaler", REMOTE_KIND: "a remote provider's model"}.get(
        kind, "an SDXL checkpoint"
    )
    if model is None:
        raise ModelUnavailable(
            f"model {model_id} does not exist", model_id=model_id, reason="unknown", field=field
        )
    if model.kind != kind:
        raise ModelUnavailable(
            f"model {model_id} ({model.name!r}) is a {model.kind}, not {what}",
            model_id=model_id,
            reason="wrong_kind",
            field=field,
        )
    if not model.installed:
        raise ModelUnavailable(
            f"model {model_id} is not installed", model_id=model_id, reason="not_installed", field=field
        )
    if not model.enabled:
        raise ModelUnavailable(
            f"model {model_id} is disabled", model_id=model_id, reason="disabled", field=field
        )
    return model


def resolve_model(session: Session, model_id: uuid.UUID | None, default_name: str = "") -> Model:
    """The checkpoint for a job: `model_id`, else `DF_DEFAULT_MODEL`, else the newest enabled one.

    Without either, a model named for the default provider (`epicrealism` in its name) comes first.
    """
    if model_id is not None:
        return _usable(models_repo.get_model(session, model_id), model_id, CHECKPOINT_KIND, "model_id")
    if default_name:
        model = models_repo.get_model_by_name(session, default_name)
        if model is not None and model.installed and model.enabled and model.kind == CHECKPOINT_KIND:
            return model
    candidates = models_repo.list_models(session, enabled=True, kind=CHECKPOINT_KIND)
    if not candidates:
        raise ModelUnavailable(
            f"no model is installed and enabled; {INSTALL_HINT}", model_id=None, reason="none"
        )
    named = [m for m in candidates if PROVIDER_MODEL_HINT in m.name.lower()]
    return (named or candidates)[0]


def resolve_upscaler(session: Session, model_id: uuid.UUID | None) -> Model:
    """The upscaler for a job's `upscale` stage: `model_id`, else the newest enabled one."""
    field = "upscale.upscaler_model_id"
    if model_id is not None:
        return _usable(models_repo.get_model(session, model_id), model_id, UPSCALER_KIND, field)
    candidates = models_repo.list_models(session, enabled=True, kind=UPSCALER_KIND)
    if not candidates:
        raise ModelUnavailable(
            f"the job asks to upscale but no upscaler is installed and enabled; {UPSCALER_HINT}",
            model_id=None,
            reason="none",
            field=field,
            none_code=ErrorCode.no_upscaler_installed,
        )
    return candidates[0]


def resolve_remote_model(session: Session, provider: str, model_id: uuid.UUID | None) -> Model:
    """The model a `provider` job renders with: `model_id` (one of that provider's), else its first."""
    if model_id is not None:
        model = _usable(models_repo.get_model(session, model_id), model_id, REMOTE_KIND, "model_id")
        if (model.extra or {}).get("provider") != provider:
            raise ModelUnavailable(
                f"model {model_id} ({model.name!r}) is not served by provider {provider!r}",
                model_id=model_id,
                reason="wrong_provider",
            )
        return model
    candidates = remote_models(session, provider)
    if not candidates:
        raise ModelUnavailable(
            f"provider {provider!r} offers no model (DF_OPENAI_MODELS is empty?)",
            model_id=None,
            reason="none",
        )
    return candidates[0]
