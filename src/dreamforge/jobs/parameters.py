"""Whether a job's model can honour what the job asks for: a remote provider's model takes only the
fields its `parameters_schema` lists, and a field it cannot honour is refused, never silently dropped."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from dreamforge.db.tables import Model
from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError
from dreamforge.registry.install import REMOTE_KIND

# Fields about the job itself, not the image: every model takes them.
ALWAYS_HONOURED = frozenset(
    {
        "type",
        "provider",
        "model_id",
        "prompt",
        "count",
        "format",
        "embed_metadata",
        "webhook",
        "webhook_events_filter",
    }
)


class ParameterUnsupported(DreamForgeError):
    """The job sets a field (or a value) its model cannot honour."""

    code = ErrorCode.parameter_unsupported
    status = 422

    def __init__(self, field: str, model: Model, why: str) -> None:
        super().__init__(
            f"{field}: {why} ({model.name!r}; its parameters_schema lists what it takes)",
            details={
                "field": field,
                "model_id": str(model.id),
                "provider": (model.extra or {}).get("provider"),
            },
        )


def check_parameters(fields_set: Collection[str], values: dict[str, Any], model: Model) -> None:
    """Refuse a field `model` cannot honour (of `fields_set`, those the request set) or a size it
    does not draw."""
    if model.kind != REMOTE_KIND:
        return
    schema = model.parameters_schema or {}
    honoured = ALWAYS_HONOURED | set(schema.get("properties", {}))
    for name in sorted(fields_set):
        if name not in honoured:
            raise ParameterUnsupported(name, model, "this provider cannot honour it; leave it out")
    sizes = schema.get("x-sizes")
    size = f"{values['width']}x{values['height']}"
    if sizes and size not in sizes:
        raise ParameterUnsupported(
            "width", model, f"{size} is not a size it draws: one of {', '.join(sizes)}"
        )
