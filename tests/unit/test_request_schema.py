"""The job request enforces the contract's bounds and defaults."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dreamforge.api.schemas import JobCreateRequest
from dreamforge.jobs.service import request_fingerprint

BASE: dict[str, Any] = {"type": "generate", "prompt": "a cat", "width": 64, "height": 64}


def test_defaults_match_the_contract() -> None:
    req = JobCreateRequest.model_validate(BASE)
    assert (req.steps, req.guidance, req.scheduler, req.format, req.count) == (
        30,
        7.0,
        "dpmpp_2m_karras",
        "png",
        1,
    )
    assert req.embed_metadata is True
    assert req.provider == "local-sdxl-epicrealism"


@pytest.mark.parametrize(
    "patch",
    [
        {"width": 65},
        {"width": 32},
        {"height": 4104},
        {"steps": 0},
        {"steps": 201},
        {"count": 101},
        {"guidance": 51},
        {"prompt": ""},
        {"prompt": "   "},
        {"scheduler": "euler"},
        {"format": "gif"},
        {"seed": -1},
        {"type": "upscale"},
        {"unknown_field": 1},
    ],
)
def test_out_of_contract_values_are_rejected(patch: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        JobCreateRequest.model_validate({**BASE, **patch})


def test_fingerprint_ignores_explicit_defaults() -> None:
    a = JobCreateRequest.model_validate(BASE)
    b = JobCreateRequest.model_validate({**BASE, "steps": 30, "count": 1})
    c = JobCreateRequest.model_validate({**BASE, "steps": 31})
    assert request_fingerprint(a) == request_fingerprint(b) != request_fingerprint(c)
