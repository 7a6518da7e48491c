"""Compose an item's infotext and full JSON recipe from its job, seed, model and runtime."""

from __future__ import annotations

import uuid
from typing import Any

from dreamforge.engines.base import Scheduler
from dreamforge.recipe.infotext import ParamValue, build_infotext
from dreamforge.registry.hashing import autov2

RECIPE_SCHEMA = "dreamforge.recipe/v1"

# A1111's names for our samplers: (Sampler, Schedule type).
SAMPLER_NAMES: dict[str, tuple[str, str | None]] = {
    Scheduler.dpmpp_2m_karras: ("DPM++ 2M", "Karras"),
    Scheduler.unipc: ("UniPC", None),
}


def compose(
    *,
    job_id: uuid.UUID,
    item_index: int,
    count: int,
    params: dict[str, Any],
    seed: int,
    model: dict[str, Any],
    runtime: dict[str, str],
    batch: dict[str, int] | None = None,
    upscale: dict[str, Any] | None = None,
    stage: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Return (infotext, recipe) for one item. `model` holds id, name, sha256 and provenance.

    `batch` is the pipeline call the item was rendered in (`size`, the item's `position`).
    `upscale` is the upscale step the image went through (`worker.stages.upscale_record`): the
    infotext then reads as A1111's hires fix, whose `Size` is the size before upscaling. `stage`
    (`base` or `final`) marks which image of an upscaling job this is.
    """
    sampler, schedule = SAMPLER_NAMES[params["scheduler"]]
    extra = model.get("extra") or {}
    infotext_params: dict[str, ParamValue] = {
        "Steps": params["steps"],
        "Sampler": sampler,
        "Schedule type": schedule,
        "CFG scale": params["guidance"],
        "Seed": seed,
        "Size": f"{params['width']}x{params['height']}",
        "Model hash": autov2(model["sha256"]),
        "Model": model["name"],
        **_hires(upscale),
        "RNG": "CPU",
        "Version": f"dreamforge {runtime.get('dreamforge', '')}".strip(),
    }
    if batch and batch["size"] > 1:
        # As A1111 writes a batched image's place in its call.
        infotext_params["Batch size"] = batch["size"]
        infotext_params["Batch pos"] = batch["position"]
    civitai_version = extra.get("civitai_version_id")
    hashes: dict[str, object] = {"model": autov2(model["sha256"])}
    if upscale is not None:
        hashes["upscaler"] = upscale["upscaler"]["autov2"]
    if civitai_version is not None or upscale is not None:
        infotext_params["Hashes"] = hashes
    if civitai_version is not None:
        infotext_params["Civitai resources"] = [
            {"type": "checkpoint", "modelVersionId": int(civitai_version)}
        ]
    infotext = build_infotext(params["prompt"], params.get("negative_prompt"), infotext_params)
    recipe: dict[str, Any] = {
        **_recipe_head(job_id, item_index, count, params),
        "negative_prompt": params.get("negative_prompt"),
        "width": params["width"],
        "height": params["height"],
        "steps": params["steps"],
        "guidance": params["guidance"],
        "scheduler": params["scheduler"],
        "seed": seed,
        "requested_seed": params.get("seed"),
        "seed_strategy": params.get("seed_strategy", "random"),
        "format": params["format"],
        # A re-run with the same batch plan is byte-identical; another plan only visually identical.
        "batch": batch or {"size": 1, "position": 0},
        "batch_invariant": bool(params.get("batch_invariant", False)),
        "model": {
            "id": str(model["id"]),
            "name": model["name"],
            "sha256": model["sha256"],
            "autov2": autov2(model["sha256"]),
            "version": model.get("version"),
            "source": model.get("source"),
            "revision": model.get("revision"),
        },
        "rng": {"device": runtime.get("rng_device", "cpu"), "generator": "torch.Generator.manual_seed"},
        "runtime": runtime,
    }
    if stage is not None:
        recipe["stage"] = stage
    if upscale is not None:
        recipe["upscale"] = upscale
    return infotext, recipe


def compose_remote(
    *,
    job_id: uuid.UUID,
    item_index: int,
    count: int,
    params: dict[str, Any],
    model: dict[str, Any],
    runtime: dict[str, str],
) -> tuple[str, dict[str, Any]]:
    """Return (infotext, recipe) for an image a remote provider drew.

    Only what is known is written: the provider chose its own sampler, steps and noise, so the infotext
    has no `Steps`, `Sampler`, `Seed` or `Model hash`. A1111 readers want a parameters line that starts
    with `Steps:`, so they show this one as text: a reader still sees the size, model and provider, and
    the JSON recipe names them (with the endpoint) exactly.
    """
    infotext_params: dict[str, ParamValue] = {
        "Size": f"{params['width']}x{params['height']}",
        "Model": model["name"],
        "Provider": str(params.get("provider")),
        "Version": f"dreamforge {runtime.get('dreamforge', '')}".strip(),
    }
    infotext = build_infotext(params["prompt"], None, infotext_params)
    recipe: dict[str, Any] = {
        **_recipe_head(job_id, item_index, count, params),
        "width": params["width"],
        "height": params["height"],
        "format": params["format"],
        "model": {
            "id": str(model["id"]),
            "name": model["name"],
            "remote_model": (model.get("extra") or {}).get("remote_model"),
            "source": model.get("source"),
        },
        "runtime": runtime,
    }
    return infotext, recipe


def _recipe_head(job_id: uuid.UUID, item_index: int, count: int, params: dict[str, Any]) -> dict[str, Any]:
    """The fields every recipe starts with, local or remote: which item of which job, and its prompt."""
    return {
        "schema": RECIPE_SCHEMA,
        "job_id": str(job_id),
        "item_index": item_index,
        "count": count,
        "type": params.get("type", "generate"),
        "provider": params.get("provider"),
        "prompt": params["prompt"],
    }


def _hires(upscale: dict[str, Any] | None) -> dict[str, ParamValue]:
    """A1111's hires-fix keys for an upscaled image, in the order A1111 writes them."""
    if upscale is None:
        return {}
    keys: dict[str, ParamValue] = {}
    if upscale["method"] == "refine":
        keys["Denoising strength"] = upscale["denoise"]
    keys["Hires upscale"] = upscale["scale"]
    if upscale["method"] == "refine":
        keys["Hires steps"] = upscale["steps"]
    keys["Hires upscaler"] = upscale["upscaler"]["name"]
    return keys
