"""Each item's infotext names its sampler, seed and model hash as A1111 would."""

from __future__ import annotations

import json
import re
import uuid

from dreamforge.recipe.compose import compose
from dreamforge.recipe.infotext import parse_infotext

PARAMS = {
    "type": "generate",
    "provider": "local-sdxl-epicrealism",
    "prompt": "a fox",
    "negative_prompt": None,
    "width": 64,
    "height": 72,
    "steps": 12,
    "guidance": 6.5,
    "scheduler": "dpmpp_2m_karras",
    "format": "png",
    "seed": 9,
    "count": 2,
}
MODEL = {"id": uuid.uuid4(), "name": "epicrealismXL", "sha256": "a5f58eb1c3" + "0" * 54}
RUNTIME = {"dreamforge": "0.1.0", "torch": "2.13.0", "diffusers": "0.42.1", "rng_device": "cpu"}


def test_infotext_fields() -> None:
    infotext, recipe = compose(
        job_id=uuid.uuid4(), item_index=1, count=2, params=PARAMS, seed=77, model=MODEL, runtime=RUNTIME
    )
    prompt, negative, params = parse_infotext(infotext)
    assert (prompt, negative) == ("a fox", "")
    assert params["Sampler"] == "DPM++ 2M"
    assert params["Schedule type"] == "Karras"
    assert params["Seed"] == "77"
    assert params["Size"] == "64x72"
    assert params["CFG scale"] == "6.5"
    assert params["Model hash"] == "a5f58eb1c3"
    assert params["RNG"] == "CPU"
    assert recipe["seed"] == 77
    assert recipe["model"]["sha256"] == MODEL["sha256"]
    assert recipe["runtime"]["torch"] == "2.13.0"
    assert "Civitai resources" not in params


def test_unipc_has_no_schedule_type_and_civitai_models_link() -> None:
    model = {**MODEL, "extra": {"civitai_version_id": 1234}}
    infotext, _ = compose(
        job_id=uuid.uuid4(),
        item_index=0,
        count=1,
        params={**PARAMS, "scheduler": "unipc"},
        seed=1,
        model=model,
        runtime=RUNTIME,
    )
    _, _, params = parse_infotext(infotext)
    assert params["Sampler"] == "UniPC"
    assert "Schedule type" not in params
    assert json.loads(params["Civitai resources"]) == [{"type": "checkpoint", "modelVersionId": 1234}]
    assert json.loads(params["Hashes"]) == {"model": "a5f58eb1c3"}
    # Bare JSON, as Civitai's parser matches it (`Hashes: {...}`), never a JSON-quoted string.
    assert ', Hashes: {"model": "a5f58eb1c3"}' in infotext
    assert re.search(r", Civitai resources:\s*(\[\{.*?\}\])", infotext)
