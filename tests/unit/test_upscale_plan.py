"""The upscale step's contract and bookkeeping: validation, limits, stages, steps and metadata."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError

from dreamforge.api.schemas import JobCreateRequest
from dreamforge.jobs.limits import JobLimits, LimitExceeded, check_request
from dreamforge.jobs.stages import stage_plan, step_statuses
from dreamforge.jobs.state import JobStatus
from dreamforge.recipe.compose import compose
from dreamforge.recipe.infotext import parse_infotext

BASE: dict[str, Any] = {"type": "generate", "prompt": "a fox", "width": 1024, "height": 1024}


def _request(**upscale: Any) -> JobCreateRequest:
    return JobCreateRequest.model_validate({**BASE, "upscale": upscale})


def test_refine_defaults_are_filled_in_where_the_job_stores_them() -> None:
    stored = _request(scale=2, method="refine").model_dump_stored()
    assert stored["upscale"] == {
        "scale": 2,
        "method": "refine",
        "upscaler_model_id": None,
        "denoise": 0.35,
        "steps": 20,
        "keep_base": False,
    }
    # Without upscale nothing changes from what jobs stored before.
    plain = JobCreateRequest.model_validate(BASE)
    assert plain.model_dump_stored() == plain.model_dump(mode="json")


@pytest.mark.parametrize(
    ("upscale", "message"),
    [
        ({"scale": 2, "steps": 10}, "steps apply to method 'refine' only"),
        ({"scale": 2, "method": "refine", "denoise": 0.04, "steps": 20}, "runs no denoising step"),
        ({"scale": 4, "width": 1032}, "each side may be at most 4096"),
    ],
)
def test_requests_that_cannot_work_are_refused_with_the_reason(upscale: dict[str, Any], message: str) -> None:
    width = upscale.pop("width", 1024)
    with pytest.raises(ValidationError, match=message):
        JobCreateRequest.model_validate({**BASE, "width": width, "upscale": upscale})


def test_the_size_limit_counts_the_delivered_pixels() -> None:
    limits = JobLimits(max_megapixels_per_job=8.0)
    check_request(JobCreateRequest.model_validate({**BASE, "count": 4}), limits)
    with pytest.raises(LimitExceeded) as caught:
        check_request(JobCreateRequest.model_validate({**BASE, "count": 2, "upscale": {"scale": 2}}), limits)
    assert "2 x 2048x2048" in caught.value.message
    assert caught.value.details["field"] == "width*height*count*upscale.scale^2"


def test_the_steps_limit_covers_the_refine_pass() -> None:
    request = _request(scale=2, method="refine", steps=60)
    with pytest.raises(LimitExceeded) as caught:
        check_request(request, JobLimits(max_steps=50))
    assert caught.value.details["field"] == "upscale.steps"


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({}, ["denoise", "encode_and_store"]),
        ({"upscale": {"method": "model"}}, ["denoise", "upscale", "encode_and_store"]),
        ({"upscale": {"method": "refine"}}, ["denoise", "upscale", "refine", "encode_and_store"]),
    ],
)
def test_stage_weights_add_up_and_progress_moves_through_them(
    params: dict[str, Any], names: list[str]
) -> None:
    plan = stage_plan(params)
    assert [name for name, _ in plan.stages] == names
    assert sum(w for _, w in plan.stages) == pytest.approx(1.0)
    points = [plan.progress(name, step, 4) for name in names for step in range(5)]
    assert points == sorted(points)
    assert plan.progress(names[-1], 1, 1) == pytest.approx(1.0)


@dataclass
class Item:
    status: str
    stage: str | None


UPSCALING = {"upscale": {"method": "model"}}


@pytest.mark.parametrize(
    ("job", "items", "expected"),
    [
        (JobStatus.queued, [Item("pending", None)] * 2, ["queued", "queued"]),
        (JobStatus.running, [Item("running", "denoise"), Item("pending", None)], ["running", "queued"]),
        (JobStatus.running, [Item("running", "upscale"), Item("running", "denoise")], ["running", "running"]),
        (
            JobStatus.running,
            [Item("succeeded", "encode_and_store"), Item("running", "upscale")],
            ["succeeded", "running"],
        ),
        (
            JobStatus.failed,
            [Item("succeeded", "encode_and_store"), Item("running", "upscale")],
            ["succeeded", "failed"],
        ),
        (JobStatus.canceled, [Item("running", "denoise")], ["canceled", "canceled"]),
        (JobStatus.succeeded, [Item("succeeded", "encode_and_store")], ["succeeded", "succeeded"]),
    ],
)
def test_steps_follow_the_items(job: JobStatus, items: list[Item], expected: list[str]) -> None:
    steps = step_statuses(job, UPSCALING, items)
    assert [name for name, _ in steps] == ["generate", "upscale"]
    assert [status for _, status in steps] == expected


def test_a_job_without_upscale_has_its_one_generate_step() -> None:
    assert step_statuses(JobStatus.running, {}, [Item("running", "denoise")]) == [("generate", "running")]


def test_hires_metadata_reads_as_a1111_writes_it() -> None:
    upscaler = {"name": "4x-UltraSharp", "sha256": "ab" * 32, "autov2": "abababab" + "ab"}
    infotext, recipe = compose(
        job_id=uuid.uuid4(),
        item_index=0,
        count=1,
        params={**BASE, "steps": 30, "guidance": 7.0, "scheduler": "dpmpp_2m_karras", "format": "png"},
        seed=42,
        model={"id": uuid.uuid4(), "name": "epicrealismXL", "sha256": "cd" * 32},
        runtime={"dreamforge": "0.1.0"},
        upscale={"method": "refine", "scale": 2, "denoise": 0.35, "steps": 20, "upscaler": upscaler},
        stage="final",
    )
    line = infotext.splitlines()[-1]
    assert "Size: 1024x1024, Model hash: cdcdcdcdcd, Model: epicrealismXL, Denoising strength: 0.35, " in line
    assert "Hires upscale: 2, Hires steps: 20, Hires upscaler: 4x-UltraSharp" in line
    _, _, params = parse_infotext(infotext)
    assert params["Hashes"] == '{"model": "cdcdcdcdcd", "upscaler": "ababababab"}'
    assert recipe["stage"] == "final" and recipe["upscale"]["upscaler"]["name"] == "4x-UltraSharp"
