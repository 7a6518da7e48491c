"""The v1 contract: every request and response body of the API, as pydantic models."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar, Literal, cast
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

# The domain's vocabulary, part of the contract; re-exported so clients import it from here.
from dreamforge.engines.base import DEFAULT_PROVIDER, Scheduler, UpscaleMethod
from dreamforge.jobs.seeds import SeedStrategy
from dreamforge.jobs.state import JobStatus
from dreamforge.storage.base import ImageFormat
from dreamforge.webhooks.outbox import DEFAULT_EVENTS, WebhookEvent

__all__ = [
    "DEFAULT_PROVIDER",
    "ImageFormat",
    "JobStatus",
    "Scheduler",
    "SeedStrategy",
    "UpscaleMethod",
    "WebhookEvent",
]

# The largest side a job's delivered images may have, before and after upscaling.
MAX_SIDE = 4096
# `refine`'s defaults when the request leaves them out (A1111's hires-fix habits for SDXL).
DEFAULT_REFINE_DENOISE = 0.35
DEFAULT_REFINE_STEPS = 20


_NULL: dict[str, Any] = {"type": "null"}


def _absent_not_null(schema: dict[str, Any], always_sent: frozenset[str]) -> None:
    """Rewrite a model's serialization schema so that each nullable property is optional instead.

    `X | None` becomes `X` (its `null` branch and `default: null` go) and leaves `required`, unless
    it is named in `always_sent`.
    """
    required: list[str] = schema.get("required", [])
    for name, prop in schema.get("properties", {}).items():
        variants = prop.get("anyOf")
        if not isinstance(variants, list) or _NULL not in variants:
            continue
        rest = [v for v in variants if v != _NULL]
        own = {k: v for k, v in prop.items() if k != "anyOf" and not (k == "default" and v is None)}
        prop.clear()
        prop.update({**rest[0], **own} if len(rest) == 1 else {"anyOf": rest, **own})
        if name in always_sent:
            if name not in required:
                required.append(name)
        elif name in required:
            required.remove(name)
    if required:
        schema["required"] = required
    else:
        schema.pop("required", None)


class ResponseModel(BaseModel):
    """A response body, or a part of one: an unset optional field is left out, never sent as `null`.

    Every serialization drops the fields whose value is None: FastAPI's responses, `model_dump` (any
    mode) and `model_dump_json`, so SSE payloads, NDJSON lines and the CLI's JSON too. Values inside a
    free-form `dict` field (`details`, `parameters_schema`) are kept as they are.

    The serialization schema (the one the OpenAPI document shows) says the same: a field that may be
    None is neither `required` nor nullable, and every other field, defaulted or not, is `required`,
    as it is always sent. Validation is unchanged, so a client still reads an explicit `null` as None.
    """

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    # Fields typed `X | None` (for models built client-side) that the API always sends.
    always_sent: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        if handler.mode != "serialization":
            return handler(core_schema)
        # The serializer's return type (`dict[str, Any]`) would stand in for the model's schema in
        # serialization mode; the model's fields, without it, are what is actually sent.
        fields = cast(CoreSchema, {k: v for k, v in core_schema.items() if k != "serialization"})
        schema = handler(fields)
        _absent_not_null(handler.resolve_ref_schema(schema), cls.always_sent)
        return schema


class ErrorResponse(ResponseModel):
    """The body of every error answer."""

    always_sent = frozenset({"correlation_id"})

    code: str = Field(description="Stable, machine-readable error code, e.g. `validation_error`.")
    message: str = Field(description="What went wrong, for a person.")
    details: dict[str, Any] = Field(default_factory=dict, description="Structured context for the error.")
    correlation_id: str | None = Field(default=None, description="Equals the response's `X-Request-Id`.")


class HealthResponse(ResponseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"


class ReadinessResponse(ResponseModel):
    """Readiness: every dependency answered."""

    status: Literal["ready"] = "ready"
    checks: dict[str, str] = Field(
        description="Each dependency (`database`, `storage`, and `broker` when distributed) and `ok`."
    )


_MULTIPLE_OF_8: dict[str, Any] = {"multipleOf": 8}


class UpscaleRequest(BaseModel):
    """Enlarge every image after it is generated (the job's `upscale` step).

    `method: model` runs a super-resolution model (ESRGAN family) alone. `method: refine` runs it,
    then an SDXL img2img pass over the result (A1111's hires fix): `steps` is that pass's schedule
    and `int(steps * denoise)` of its steps run. The delivered image is `scale` times the requested
    `width` and `height`, which must stay within 4096 per side.
    """

    model_config = ConfigDict(extra="forbid")

    scale: Literal[2, 4] = Field(description="Output size over the generated size.")
    method: UpscaleMethod = UpscaleMethod.model
    upscaler_model_id: uuid.UUID | None = Field(
        default=None, description="An installed `upscaler` model; default: the newest enabled one."
    )
    denoise: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description=f"`refine` only: how much the img2img pass changes (default {DEFAULT_REFINE_DENOISE}).",
    )
    steps: int | None = Field(
        default=None,
        ge=1,
        le=200,
        description=f"`refine` only: the img2img pass's schedule length (default {DEFAULT_REFINE_STEPS}).",
    )
    keep_base: bool = Field(
        default=False, description="Also store each generated image before upscaling (`stage: base`)."
    )

    @model_validator(mode="after")
    def _refine_fields(self) -> UpscaleRequest:
        if self.method is UpscaleMethod.model:
            given = [name for name in ("denoise", "steps") if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{' and '.join(given)} apply to method 'refine' only")
            return self
        denoise = DEFAULT_REFINE_DENOISE if self.denoise is None else self.denoise
        steps = DEFAULT_REFINE_STEPS if self.steps is None else self.steps
        if int(steps * denoise) < 1:
            raise ValueError(
                f"denoise {denoise} over {steps} steps runs no denoising step (int(steps * denoise) is 0)"
            )
        return self

    @property
    def refine_denoise(self) -> float:
        """The img2img pass's strength, its default filled in."""
        return DEFAULT_REFINE_DENOISE if self.denoise is None else self.denoise

    @property
    def refine_steps(self) -> int:
        """The img2img pass's schedule length, its default filled in."""
        return DEFAULT_REFINE_STEPS if self.steps is None else self.steps


class JobCreateRequest(BaseModel):
    """A request to generate `count` images from a prompt.

    If `seed` is omitted, each item gets a fresh random seed right before its generation begins.
    If `seed` is given, item 0 uses it exactly and later items get fresh random seeds (MVP behaviour);
    `seed_strategy` changes that: `sequential` gives item i the seed `seed + i`, `fixed` gives every
    item the same seed. Every item's seed is reported on its artifact and in `/progress`, and is
    embedded in the image.

    Items render in batches of up to `DF_MAX_BATCH`; a batched item is visually identical (at most
    2/255 per pixel) to its solo render, and its recipe records the batch. `batch_invariant` renders
    every item alone, so each reproduces bit for bit with `count=1` and its seed.
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["generate"]
    provider: str = Field(default=DEFAULT_PROVIDER, max_length=100)
    prompt: str = Field(min_length=1, max_length=4096)
    negative_prompt: str | None = Field(default=None, max_length=4096)
    # `multipleOf` is stated in the schema; the validator below enforces it with a message that helps.
    width: int = Field(
        ge=64, le=4096, description="Pixels; a multiple of 8.", json_schema_extra=_MULTIPLE_OF_8
    )
    height: int = Field(
        ge=64, le=4096, description="Pixels; a multiple of 8.", json_schema_extra=_MULTIPLE_OF_8
    )
    steps: int = Field(default=30, ge=1, le=200)
    guidance: float = Field(default=7.0, ge=0, le=50)
    scheduler: Scheduler = Scheduler.dpmpp_2m_karras
    format: ImageFormat = ImageFormat.png
    embed_metadata: bool = True
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    count: int = Field(default=1, ge=1, le=100)
    seed_strategy: SeedStrategy = Field(
        default=SeedStrategy.random, description="How items after the first get their seeds."
    )
    batch_invariant: bool = Field(
        default=False, description="Render each item alone: bit-identical to its `count=1` render, slower."
    )
    model_id: uuid.UUID | None = None
    upscale: UpscaleRequest | None = Field(
        default=None, description="Enlarge each image after generation: a second step, `upscale`."
    )
    webhook: str | None = Field(
        default=None,
        min_length=8,
        max_length=2048,
        description=(
            "An `https` URL to POST the job's events to, signed per Standard Webhooks (`webhook-id`, "
            "`webhook-timestamp`, `webhook-signature`). Loopback, private, link-local and metadata "
            "addresses are refused (422 `webhook_refused`); plain `http` only to `DF_WEBHOOK_ALLOW_HOSTS`."
        ),
        json_schema_extra={"format": "uri"},
    )
    webhook_events_filter: list[WebhookEvent] = Field(
        default_factory=lambda: list(DEFAULT_EVENTS),
        min_length=1,
        max_length=3,
        description=(
            "Which events to send: `start` (the job started running), `item` (an image was stored), "
            "`completed` (the job ended: succeeded, failed or canceled). Needs `webhook`."
        ),
    )

    @property
    def output_scale(self) -> int:
        """How many times larger than `width`x`height` the delivered images are."""
        return self.upscale.scale if self.upscale else 1

    @property
    def refine_steps(self) -> int:
        """The schedule length of the `refine` pass (0 without one), for the steps limit."""
        if self.upscale is None or self.upscale.method is not UpscaleMethod.refine:
            return 0
        return self.upscale.refine_steps

    @model_validator(mode="after")
    def _output_fits(self) -> JobCreateRequest:
        scale = self.output_scale
        if scale > 1 and max(self.width, self.height) * scale > MAX_SIDE:
            raise ValueError(
                f"upscale.scale {scale} makes {self.width * scale}x{self.height * scale} images; "
                f"each side may be at most {MAX_SIDE} (lower width/height or the scale)"
            )
        return self

    @model_validator(mode="after")
    def _events_need_a_webhook(self) -> JobCreateRequest:
        if "webhook_events_filter" in self.model_fields_set and self.webhook is None:
            raise ValueError("webhook_events_filter is set but webhook is not (where should events go?)")
        return self

    @field_validator("webhook")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        # The full policy (allowed hosts, resolved addresses) is the service's: webhook_refused.
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an absolute https:// URL")
        return value

    @field_validator("webhook_events_filter")
    @classmethod
    def _no_repeats(cls, value: list[WebhookEvent]) -> list[WebhookEvent]:
        if len(set(value)) != len(value):
            raise ValueError("lists an event twice")
        return value

    def model_dump_stored(self) -> dict[str, Any]:
        """The parameters a job row stores: `model_dump(mode="json")` with `refine`'s defaults filled in."""
        data = self.model_dump(mode="json")
        if self.upscale is not None and self.upscale.method is UpscaleMethod.refine:
            data["upscale"]["denoise"] = self.upscale.refine_denoise
            data["upscale"]["steps"] = self.upscale.refine_steps
        return data

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        # The SDXL VAE works on 8x8 pixel cells; other sizes would be silently cropped.
        if value % 8:
            raise ValueError(
                f"must be a multiple of 8 (nearest: {value - value % 8} or {value - value % 8 + 8})"
            )
        return value

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain non-whitespace text")
        return value


class JobSummaryRef(ResponseModel):
    """The job as returned right after creation."""

    id: uuid.UUID
    status: JobStatus
    type: Literal["generate"]
    created_at: datetime


class JobCreatedResponse(ResponseModel):
    """Answer to `POST /jobs`."""

    job: JobSummaryRef


class JobStep(ResponseModel):
    """One step of a job's recipe: `generate`, then `upscale` when the job asks for it."""

    name: str
    status: str = Field(description="A job status: `queued`, `running`, `succeeded`, `failed`, `canceled`.")


class JobCounts(ResponseModel):
    """How many items the job has and how many are done."""

    count: int
    completed: int


class JobError(ResponseModel):
    """Why a job failed."""

    code: str
    message: str


class JobStatusResponse(ResponseModel):
    """A job's current state."""

    id: uuid.UUID
    type: str
    status: JobStatus
    created_at: datetime
    updated_at: datetime
    steps: list[JobStep] = Field(default_factory=list)
    summary: JobCounts
    started_at: datetime | None = Field(default=None, description="When the current attempt started.")
    finished_at: datetime | None = None
    model_id: uuid.UUID | None = None
    attempts: int = Field(default=0, description="Attempts used; a clean shutdown does not use one.")
    error: JobError | None = Field(default=None, description="Set when `status` is `failed`.")
    cancel_requested_at: datetime | None = Field(
        default=None, description="When a cancel was asked for; the job stops within one step."
    )
    webhook: str | None = Field(default=None, description="Where the job's events are POSTed, if anywhere.")
    webhook_events_filter: list[WebhookEvent] | None = Field(
        default=None, description="The events sent to `webhook` (present with it)."
    )


class Artifact(ResponseModel):
    """One stored image of a job."""

    id: uuid.UUID
    format: ImageFormat
    width: int
    height: int
    seed: int | None = None
    item_index: int
    stage: Literal["final", "base"] = Field(
        default="final",
        description="`final`: the delivered image; `base`: the image before upscaling (`upscale.keep_base`).",
    )
    s3_key: str
    url: str | None = Field(default=None, description="Signed URL for a GET; valid until `expires_at`.")
    expires_at: datetime | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    content_type: str | None = None


class WebhookPayload(JobStatusResponse):
    """The body of a webhook delivery: the job as `GET /v1/jobs/{id}` returns it (when sent), plus the event.

    Verify `webhook-signature` over the raw body with your secret before trusting it; de-duplicate by
    `webhook-id`, the same on every attempt of one delivery.
    """

    event: WebhookEvent = Field(description="What happened: `start`, `item` or `completed`.")
    item_index: int | None = Field(default=None, description="`item` events: the item that was stored.")
    artifacts: list[Artifact] | None = Field(
        default=None,
        description="`completed`: every stored artifact; `item`: that item's. URLs are signed at sending.",
    )


class WebhookDelivery(ResponseModel):
    """One delivery of a job event to its webhook, and how its attempts went."""

    id: uuid.UUID
    webhook_id: str = Field(description="The `webhook-id` header: the same on every attempt.")
    event: WebhookEvent
    item_index: int | None = None
    url: str
    status: Literal["pending", "delivered", "failed"] = Field(
        description="`pending`: not yet delivered (see `next_attempt_at`); `failed`: out of attempts, or "
        "the receiver answered a 4xx other than 408/429 (redeliver to try again)."
    )
    attempts: int
    last_status_code: int | None = Field(default=None, description="The HTTP status of the last answer.")
    last_error: str | None = Field(default=None, description="Why the last attempt did not deliver.")
    next_attempt_at: datetime | None = Field(default=None, description="When the next attempt is due.")
    delivered_at: datetime | None = None
    created_at: datetime


class WebhookDeliveryListResponse(ResponseModel):
    """A job's webhook deliveries, oldest first."""

    deliveries: list[WebhookDelivery]


class ArtifactListResponse(ResponseModel):
    """Answer to `GET /jobs/{id}/artifacts`."""

    artifacts: list[Artifact]


class ProgressItem(ResponseModel):
    """Progress of one item of the batch."""

    item_index: int
    progress: float = Field(ge=0, le=1)
    status: str | None = None
    seed: int | None = None
    stage: str | None = Field(
        default=None, description="The stage the item is in or last ran (a `stages[].name`)."
    )


class Stage(ResponseModel):
    """A stage of an item's work and its share of the item's progress."""

    name: str
    weight: float


class ProgressResponse(ResponseModel):
    """Aggregated progress: overall, per item, and the stage weights behind it."""

    progress: float = Field(ge=0, le=1)
    status: JobStatus | None = None
    items: list[ProgressItem] = Field(default_factory=list)
    stages: list[Stage] = Field(default_factory=list)


class LogEvent(ResponseModel):
    """One log line of a job (a line of the NDJSON log stream)."""

    id: int
    ts: datetime
    level: Literal["debug", "info", "warning", "error"]
    message: str
    item_index: int | None = None
    job_id: uuid.UUID


class ModelSummary(ResponseModel):
    """An installed model."""

    id: uuid.UUID
    name: str
    kind: Literal["sdxl-checkpoint", "upscaler", "remote-api"]
    version: str | None = None
    scale: int | None = Field(default=None, description="An `upscaler`'s native scale (2 or 4, ...).")
    installed: bool
    enabled: bool
    parameters_schema: dict[str, Any] = Field(default_factory=dict)


class ModelFile(ResponseModel):
    """One installed file of a model."""

    path: str = Field(description="Path relative to the model's folder")
    size_bytes: int
    sha256: str


class ModelDescriptor(ModelSummary):
    """A model with its capabilities and provenance."""

    capabilities: list[str] = Field(default_factory=list)
    source: str | None = Field(
        default=None, description="Where it was installed from: `hf:<repo>[#file]`, `civitai:<version id>`"
    )
    revision: str | None = Field(
        default=None, description="The source revision installed: a Hub commit or a Civitai version id"
    )
    sha256: str | None = Field(
        default=None, description="SHA-256 of the checkpoint file (of the file manifest for a folder)"
    )
    autov2: str | None = Field(default=None, description="First 10 hex digits of `sha256` (A1111/Civitai)")
    size_bytes: int | None = None
    files: list[ModelFile] = Field(default_factory=list)
    note: str | None = None


class ModelListResponse(ResponseModel):
    """Answer to `GET /models`."""

    models: list[ModelSummary]
