"""Caps on what one job may ask for and on the queue, checked only when a new job is created.

The caller builds `JobLimits` from its settings (`DF_MAX_MEGAPIXELS_PER_JOB`, `DF_MAX_STEPS`,
`DF_MAX_QUEUED_JOBS`); 0 means no cap. An idempotent replay never reaches these checks, so a job
accepted before a limit was lowered, or before the queue filled up, is still answered as before.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.orm import Session

from dreamforge.db.tables import utcnow
from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError
from dreamforge.jobs import repository as jobs_repo

# A fixed hint: the API cannot know when a queued job will start (that depends on the steps, size
# and count of the jobs ahead). Ten seconds is on the order of one short SDXL job on a GPU, so a
# waiting client retries soon after a slot may have freed, without hammering the service.
QUEUE_FULL_RETRY_AFTER_SECONDS = 10

# A key at its most active jobs retries about when one short job may have finished.
QUOTA_ACTIVE_RETRY_AFTER_SECONDS = 10
QUOTA_WINDOW = timedelta(days=1)

MEGAPIXELS_LIMIT = "DF_MAX_MEGAPIXELS_PER_JOB"
STEPS_LIMIT = "DF_MAX_STEPS"
QUEUE_LIMIT = "DF_MAX_QUEUED_JOBS"


class JobShape(Protocol):
    """What the per-job limits read from a request."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def count(self) -> int: ...

    @property
    def steps(self) -> int: ...

    @property
    def output_scale(self) -> int:
        """How many times larger than width x height the delivered images are (upscaling)."""
        ...

    @property
    def refine_steps(self) -> int:
        """Steps of a second (refine) denoising pass; 0 without one."""
        ...


@dataclass(frozen=True)
class JobLimits:
    """The caps a new job must fit; 0 means no cap (the default: no limits at all)."""

    max_megapixels_per_job: float = 0.0
    max_steps: int = 0
    max_queued_jobs: int = 0


NO_LIMITS = JobLimits()


class LimitExceeded(DreamForgeError):
    """The job asks for more than this service allows one job (422: change the request)."""

    code = ErrorCode.limit_exceeded
    status = 422

    def __init__(self, message: str, *, limit: str, field: str, requested: float, maximum: float) -> None:
        super().__init__(
            message, details={"limit": limit, "max": maximum, "requested": requested, "field": field}
        )
        self.limit = limit


class QueueFull(DreamForgeError):
    """Too many jobs are waiting; retry the same request after `Retry-After` seconds (429)."""

    code = ErrorCode.queue_full
    status = 429

    def __init__(self, queued: int, maximum: int, retry_after: int = QUEUE_FULL_RETRY_AFTER_SECONDS) -> None:
        super().__init__(
            f"the job queue is full: {queued} job(s) are queued and this service allows at most "
            f"{maximum} ({QUEUE_LIMIT}); retry in {retry_after} s",
            details={
                "limit": QUEUE_LIMIT,
                "max": maximum,
                "queued": queued,
                "retry_after_seconds": retry_after,
            },
            headers={"Retry-After": str(retry_after)},
        )
        self.retry_after = retry_after


def megapixels(pixels: int) -> float:
    """Pixels in megapixels (10^6 pixels)."""
    return pixels / 1_000_000


def _two_megapixels(requested: int, allowed: int) -> tuple[str, str]:
    """Both amounts with one decimal, or as many more as it takes for them to read differently."""
    decimals = 1
    while decimals < 6 and f"{megapixels(requested):.{decimals}f}" == f"{megapixels(allowed):.{decimals}f}":
        decimals += 1
    return f"{megapixels(requested):.{decimals}f}", f"{megapixels(allowed):.{decimals}f}"


def check_request(request: JobShape, limits: JobLimits) -> None:
    """Raise `LimitExceeded` if the request breaks a per-job cap (steps first, then size).

    The size cap counts the delivered images: an upscaled job's are `scale`^2 times larger.
    """
    for field, steps in (("steps", request.steps), ("upscale.steps", request.refine_steps)):
        if limits.max_steps and steps > limits.max_steps:
            raise LimitExceeded(
                f"{field} is {steps}; this service allows at most {limits.max_steps} steps per job "
                f"({STEPS_LIMIT})",
                limit=STEPS_LIMIT,
                field=field,
                requested=steps,
                maximum=limits.max_steps,
            )
    if limits.max_megapixels_per_job:
        scale = request.output_scale
        width, height = request.width * scale, request.height * scale
        pixels = width * height * request.count
        allowed = round(limits.max_megapixels_per_job * 1_000_000)
        if pixels > allowed:
            shown, most = _two_megapixels(pixels, allowed)
            field = "width*height*count" if scale == 1 else "width*height*count*upscale.scale^2"
            raise LimitExceeded(
                f"{field} is {shown} MP ({request.count} x {width}x{height}); "
                f"this service allows at most {most} MP per job ({MEGAPIXELS_LIMIT})",
                limit=MEGAPIXELS_LIMIT,
                field=field,
                requested=megapixels(pixels),
                maximum=limits.max_megapixels_per_job,
            )


def check_queue(session: Session, limits: JobLimits) -> None:
    """Raise `QueueFull` if `max_queued_jobs` jobs already wait.

    A soft cap: concurrent creates may each see one free slot, so the queue can exceed it by at
    most the number of creates racing at that moment.
    """
    if not limits.max_queued_jobs:
        return
    queued = jobs_repo.count_queued(session)
    if queued >= limits.max_queued_jobs:
        raise QueueFull(queued, limits.max_queued_jobs)


@dataclass(frozen=True)
class KeyQuota:
    """What one API key may have at once and per rolling day; 0 means no cap."""

    owner: uuid.UUID
    max_active_jobs: int
    max_images_per_day: int


class QuotaExceeded(DreamForgeError):
    """The API key is at one of its quotas; the same request can succeed after `Retry-After` (429)."""

    code = ErrorCode.quota_exceeded
    status = 429

    def __init__(self, message: str, *, limit: str, maximum: int, current: int, retry_after: int) -> None:
        super().__init__(
            message,
            details={"limit": limit, "max": maximum, "current": current, "retry_after_seconds": retry_after},
            headers={"Retry-After": str(retry_after)},
        )
        self.limit = limit
        self.retry_after = retry_after


def check_quota(session: Session, quota: KeyQuota, images: int, now: datetime | None = None) -> None:
    """Raise `QuotaExceeded` if a new job of `images` images would break the key's quota.

    Raises `LimitExceeded` (422) for a job larger than the whole daily quota: no wait would help.
    """
    if quota.max_active_jobs:
        active = jobs_repo.count_active_jobs(session, quota.owner)
        if active >= quota.max_active_jobs:
            raise QuotaExceeded(
                f"this API key has {active} job(s) queued or running and may have at most "
                f"{quota.max_active_jobs} at once; retry when one ends",
                limit="max_active_jobs",
                maximum=quota.max_active_jobs,
                current=active,
                retry_after=QUOTA_ACTIVE_RETRY_AFTER_SECONDS,
            )
    if not quota.max_images_per_day:
        return
    if images > quota.max_images_per_day:
        raise LimitExceeded(
            f"the job asks for {images} images; this API key may make at most "
            f"{quota.max_images_per_day} per day",
            limit="max_images_per_day",
            field="count",
            requested=images,
            maximum=quota.max_images_per_day,
        )
    now = now or utcnow()
    window = jobs_repo.images_since(session, quota.owner, now - QUOTA_WINDOW)
    used = sum(n for _, n in window)
    excess = used + images - quota.max_images_per_day
    if excess <= 0:
        return
    # The earliest moment enough of the window's images have aged out for this job to fit.
    freed = 0
    wait = QUOTA_WINDOW
    for created, n in window:
        freed += n
        if freed >= excess:
            wait = created + QUOTA_WINDOW - now
            break
    retry_after = max(1, math.ceil(wait.total_seconds()))
    raise QuotaExceeded(
        f"this API key made {used} of its {quota.max_images_per_day} images in the last 24 hours; "
        f"{images} more fit in {retry_after} s",
        limit="max_images_per_day",
        maximum=quota.max_images_per_day,
        current=used,
        retry_after=retry_after,
    )
