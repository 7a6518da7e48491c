"""A job's steps (`generate`, then `upscale` when asked) and the stages of one item's work.

Each item runs every stage in order (denoise, then upscale, then refine, then encode and store), so
an item's progress is the weights of the stages it finished plus its share of the current one. The
job's `steps[]` follow from its items: a step has succeeded once every item is past it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dreamforge.jobs.state import JobStatus

GENERATE_STEP = "generate"
UPSCALE_STEP = "upscale"

DENOISE = "denoise"
UPSCALE = "upscale"
REFINE = "refine"
STORE = "encode_and_store"

# Weights follow the work each stage does on a GPU: denoising dominates; a GAN upscale is a single
# forward pass; a refine pass denoises again, at the larger size.
_PLAIN = ((DENOISE, 0.9), (STORE, 0.1))
_MODEL = ((DENOISE, 0.75), (UPSCALE, 0.15), (STORE, 0.1))
_REFINE = ((DENOISE, 0.45), (UPSCALE, 0.1), (REFINE, 0.35), (STORE, 0.1))

# Which step each stage belongs to.
STEP_OF = {DENOISE: GENERATE_STEP, UPSCALE: UPSCALE_STEP, REFINE: UPSCALE_STEP, STORE: UPSCALE_STEP}


@dataclass(frozen=True)
class StagePlan:
    """The stages of one item of a job, with their share of the item's progress."""

    stages: tuple[tuple[str, float], ...]

    def start(self, stage: str) -> float:
        """An item's progress when `stage` begins."""
        total = 0.0
        for name, weight in self.stages:
            if name == stage:
                return total
            total += weight
        raise KeyError(stage)

    def weight(self, stage: str) -> float:
        """`stage`'s share of an item's progress."""
        return dict(self.stages)[stage]

    def progress(self, stage: str, done: int, total: int) -> float:
        """An item's progress `done` of `total` steps into `stage`."""
        return self.start(stage) + self.weight(stage) * done / max(total, 1)


def upscale_params(params: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The job's `upscale` request, or None for a job that does not upscale."""
    upscale = params.get("upscale")
    return upscale if isinstance(upscale, Mapping) else None


def stage_plan(params: Mapping[str, Any]) -> StagePlan:
    """The stages an item of a job with these parameters goes through."""
    upscale = upscale_params(params)
    if upscale is None:
        return StagePlan(_PLAIN)
    return StagePlan(_REFINE if upscale.get("method") == "refine" else _MODEL)


def step_names(params: Mapping[str, Any]) -> list[str]:
    """`generate`, then `upscale` when the job asks for it."""
    return [GENERATE_STEP, UPSCALE_STEP] if upscale_params(params) else [GENERATE_STEP]


class ItemState(Protocol):
    """What the step statuses read from an item."""

    @property
    def status(self) -> str: ...

    @property
    def stage(self) -> str | None: ...


def _past_generate(item: ItemState) -> bool:
    return item.status == "succeeded" or STEP_OF.get(item.stage or "", GENERATE_STEP) != GENERATE_STEP


def step_statuses(
    job_status: JobStatus, params: Mapping[str, Any], items: Sequence[ItemState]
) -> list[tuple[str, JobStatus]]:
    """Each step of the job and its status, in the job's own vocabulary.

    A step succeeded once every item is past it; a running job's later step runs as soon as one
    item reached it; a failed or canceled job's unfinished steps share the job's status.
    """
    names = step_names(params)
    if len(names) == 1 or job_status in (JobStatus.queued, JobStatus.succeeded):
        return [(name, job_status) for name in names]
    generated = bool(items) and all(_past_generate(i) for i in items)
    all_done = bool(items) and all(i.status == "succeeded" for i in items)
    if job_status is JobStatus.running:
        upscale = JobStatus.running if any(_past_generate(i) for i in items) else JobStatus.queued
        return [
            (GENERATE_STEP, JobStatus.succeeded if generated else JobStatus.running),
            (UPSCALE_STEP, upscale),
        ]
    return [
        (GENERATE_STEP, JobStatus.succeeded if generated else job_status),
        (UPSCALE_STEP, JobStatus.succeeded if all_done else job_status),
    ]
