"""Every error code Dream Forge gives out, in one place: `ErrorCode` and its `CATALOG` entry.

A code is the `code` of an API error answer (`ErrorResponse.code`), the `error_code` of a failed job,
the `code` of an error the model commands raise, or one the Python client makes up for an answer it
cannot use. Raise sites name `ErrorCode` members, never string literals (tests/unit/test_error_codes.py
checks that); members are `str`s, so JSON bodies and comparisons with plain strings are unchanged.

docs/errors.md lists the same codes with their HTTP status and retry advice (a test keeps the two
equal). Codes made from an HTTP status, `http_<status>`, are a pattern (`HTTP_STATUS_PATTERN`), not
members: `http_code` builds them, and only here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorCode(StrEnum):
    """A stable, machine-readable error code; the value is what clients and job rows see."""

    # API answers: the request, the framework, and the service's dependencies.
    validation_error = "validation_error"
    bad_request = "bad_request"
    unauthorized = "unauthorized"
    forbidden = "forbidden"
    not_found = "not_found"
    method_not_allowed = "method_not_allowed"
    not_acceptable = "not_acceptable"
    payload_too_large = "payload_too_large"
    headers_too_large = "headers_too_large"
    unsupported_media_type = "unsupported_media_type"
    internal_error = "internal_error"
    database_unavailable = "database_unavailable"
    broker_unavailable = "broker_unavailable"
    not_ready = "not_ready"
    # API answers: jobs.
    queue_full = "queue_full"
    quota_exceeded = "quota_exceeded"
    too_many_streams = "too_many_streams"
    limit_exceeded = "limit_exceeded"
    idempotency_key_reused = "idempotency_key_reused"
    unknown_provider = "unknown_provider"
    model_unavailable = "model_unavailable"
    no_model_installed = "no_model_installed"
    no_upscaler_installed = "no_upscaler_installed"
    job_finished = "job_finished"
    webhook_refused = "webhook_refused"
    parameter_unsupported = "parameter_unsupported"
    illegal_transition = "illegal_transition"
    # API answers: signed artifact URLs.
    invalid_signature = "invalid_signature"
    url_expired = "url_expired"
    # Job failures (a failed job's `error_code`).
    engine_error = "engine_error"
    gpu_oom = "gpu_oom"
    gpu_fault = "gpu_fault"
    worker_lost = "worker_lost"
    time_limit_exceeded = "time_limit_exceeded"
    storage_unavailable = "storage_unavailable"
    model_files_missing = "model_files_missing"
    model_load_failed = "model_load_failed"
    device_unavailable = "device_unavailable"
    unknown_scheduler = "unknown_scheduler"
    # Job failures of remote providers (`DF_PROVIDERS`).
    provider_rejected = "provider_rejected"
    provider_auth_failed = "provider_auth_failed"
    provider_timeout = "provider_timeout"
    provider_unavailable = "provider_unavailable"
    # Model commands (`dreamforge model ...`) and the registry.
    download_failed = "download_failed"
    auth_required = "auth_required"
    checksum_mismatch = "checksum_mismatch"
    not_a_model = "not_a_model"
    not_an_upscaler = "not_an_upscaler"
    not_a_checkpoint = "not_a_checkpoint"
    transfer_failed = "transfer_failed"
    unsafe_file = "unsafe_file"
    model_name_taken = "model_name_taken"
    key_name_taken = "key_name_taken"
    # Made by the Python client for answers it cannot use.
    invalid_response = "invalid_response"
    artifact_mismatch = "artifact_mismatch"


class Surface(StrEnum):
    """Where a code can appear."""

    api = "api"  # the `code` of an HTTP error answer (`ErrorResponse`)
    job = "job"  # the `error_code` of a failed job (and its `error` event)
    cli = "cli"  # the `code` of an error the model commands and the registry raise
    client = "client"  # the `code` of an `ApiStatusError` the Python client makes itself


@dataclass(frozen=True)
class CodeInfo:
    """What a code means and what to do about it.

    `status` is the HTTP status of the answer that carries the code (or would, for an error class
    that declares one); None for codes that never leave as an HTTP answer of their own. `retry` says
    whether the same request (or command) can succeed later unchanged.
    """

    status: int | None
    meaning: str
    retry: bool
    surfaces: frozenset[Surface]


_API = frozenset({Surface.api})
_JOB = frozenset({Surface.job})
_CLI = frozenset({Surface.cli})
_CLIENT = frozenset({Surface.client})


def _info(status: int | None, retry: bool, surfaces: frozenset[Surface], meaning: str) -> CodeInfo:
    return CodeInfo(status=status, meaning=meaning, retry=retry, surfaces=surfaces)


CATALOG: dict[ErrorCode, CodeInfo] = {
    ErrorCode.validation_error: _info(
        422, False, _API, "The body, query, path or a header is invalid; `details.errors[]` says where."
    ),
    ErrorCode.bad_request: _info(400, False, _API, "The framework rejected the request as malformed."),
    ErrorCode.unauthorized: _info(
        401,
        False,
        _API,
        "With `DF_AUTH=required`: no API key, an unknown one or a revoked one (`details.reason`); the "
        "answer carries `WWW-Authenticate`.",
    ),
    ErrorCode.forbidden: _info(403, False, _API, "An HTTP 403 from the framework."),
    ErrorCode.not_found: _info(
        404,
        False,
        frozenset({Surface.api, Surface.cli, Surface.client}),
        "No such job, model, file or route; from the model commands, the source has no such "
        "repo, revision or file; from the client, an artifact without a URL.",
    ),
    ErrorCode.method_not_allowed: _info(405, False, _API, "The route exists but not with this HTTP method."),
    ErrorCode.not_acceptable: _info(
        406, False, _API, "The `Accept` header asks for nothing the route serves."
    ),
    ErrorCode.payload_too_large: _info(
        413, False, _API, "The request body is larger than `DF_MAX_BODY_BYTES` (1 MiB by default)."
    ),
    ErrorCode.headers_too_large: _info(
        431, False, _API, "The request's headers are larger than `DF_MAX_HEADER_BYTES` (16 KiB by default)."
    ),
    ErrorCode.unsupported_media_type: _info(
        415, False, _API, "The request body's content type is not supported."
    ),
    ErrorCode.internal_error: _info(
        500, False, _API, "An unexpected error in the API; quote the `correlation_id` when reporting it."
    ),
    ErrorCode.database_unavailable: _info(503, True, _API, "The database is unreachable; retry shortly."),
    ErrorCode.broker_unavailable: _info(
        503, True, _API, "The job queue (broker) did not accept the job; nothing was accepted."
    ),
    ErrorCode.not_ready: _info(
        503, True, _API, "`/readyz`: a dependency (database, broker, storage) does not answer."
    ),
    ErrorCode.queue_full: _info(
        429, True, _API, "`DF_MAX_QUEUED_JOBS` jobs are queued; retry after the `Retry-After` seconds."
    ),
    ErrorCode.quota_exceeded: _info(
        429,
        True,
        _API,
        "The API key has its most jobs queued or running, or made its most images in 24 h; "
        "`details.limit` names which; retry after `Retry-After`.",
    ),
    ErrorCode.too_many_streams: _info(
        429,
        True,
        _API,
        "`DF_SSE_MAX_STREAMS` or `DF_SSE_MAX_STREAMS_PER_JOB` streams are open; retry after `Retry-After`.",
    ),
    ErrorCode.limit_exceeded: _info(
        422, False, _API, "The job asks for more than `DF_MAX_STEPS` or `DF_MAX_MEGAPIXELS_PER_JOB` allow."
    ),
    ErrorCode.idempotency_key_reused: _info(
        409, False, _API, "The `Idempotency-Key` was already used with a different request body."
    ),
    ErrorCode.unknown_provider: _info(
        422,
        False,
        frozenset({Surface.api, Surface.job}),
        "The job names a provider this service (or the worker that took it) does not offer.",
    ),
    ErrorCode.model_unavailable: _info(
        422,
        False,
        frozenset({Surface.api, Surface.job}),
        "The model is unknown, disabled or not installed (or was removed before the job ran).",
    ),
    ErrorCode.no_model_installed: _info(
        422, False, _API, "No model is installed at all; the message says how to install one."
    ),
    ErrorCode.no_upscaler_installed: _info(
        422,
        False,
        _API,
        "The job asks for `upscale` but no upscaler is installed and enabled; the message says how.",
    ),
    ErrorCode.job_finished: _info(
        409, False, _API, "The job already succeeded or failed: nothing to cancel."
    ),
    ErrorCode.webhook_refused: _info(
        422,
        False,
        _API,
        "The job's `webhook` URL may not be called: not `https`, or its host is (or resolves to) a "
        "loopback, private, link-local, multicast or metadata address; `details.reason` says which. "
        "`DF_WEBHOOK_ALLOW_HOSTS` lets named hosts through.",
    ),
    ErrorCode.parameter_unsupported: _info(
        422,
        False,
        _API,
        "The job sets a field its provider cannot honour (e.g. `seed` or `scheduler` for a hosted model), "
        "or a value outside what the model takes; `details.field` names it, the model's `parameters_schema` "
        "says what it takes.",
    ),
    ErrorCode.illegal_transition: _info(
        409, False, _API, "A job status change the state machine forbids (a race between two updates)."
    ),
    ErrorCode.invalid_signature: _info(
        403,
        False,
        _API,
        "An artifact URL whose signature does not match; list the artifacts for a fresh one.",
    ),
    ErrorCode.url_expired: _info(
        403, False, _API, "An artifact URL past its expiry; list the artifacts for a fresh one."
    ),
    ErrorCode.engine_error: _info(
        None,
        False,
        _JOB,
        "The job failed with an unexpected error; the message names it (see the job's logs).",
    ),
    ErrorCode.gpu_oom: _info(
        None,
        False,
        _JOB,
        "The GPU ran out of memory even for one image; lower width and height, or set `DF_CPU_OFFLOAD=true`.",
    ),
    ErrorCode.gpu_fault: _info(
        None,
        True,
        _JOB,
        "The GPU failed beyond repair; the worker re-queues the job and restarts, until DF_MAX_ATTEMPTS.",
    ),
    ErrorCode.worker_lost: _info(
        None, False, _JOB, "The worker running the job stopped `DF_MAX_ATTEMPTS` times; the job gave up."
    ),
    ErrorCode.time_limit_exceeded: _info(
        None, False, _JOB, "The job ran longer than `DF_JOB_TIME_LIMIT_SECONDS`."
    ),
    ErrorCode.storage_unavailable: _info(
        503,
        True,
        _JOB,
        "The object store (S3) failed even after `DF_STORAGE_RETRY_ATTEMPTS` tries; earlier items stay.",
    ),
    ErrorCode.model_files_missing: _info(
        None, False, _JOB, "The model is registered but its files (or `DF_VAE_MODEL`) are missing on disk."
    ),
    ErrorCode.model_load_failed: _info(None, False, _JOB, "The engine could not load the model's files."),
    ErrorCode.device_unavailable: _info(
        None, False, _JOB, "`DF_DEVICE=cuda` but the worker sees no CUDA device."
    ),
    ErrorCode.unknown_scheduler: _info(None, False, _JOB, "The engine does not support the job's scheduler."),
    ErrorCode.provider_rejected: _info(
        None,
        False,
        _JOB,
        "The remote provider refused the request (400, 404, 422: a prompt it will not draw, a model it does "
        "not have); the message is the provider's.",
    ),
    ErrorCode.provider_auth_failed: _info(
        None,
        False,
        _JOB,
        "The remote provider refused the service's key (401, 403): set a valid `OPENAI_API_KEY` (bring your "
        "own key).",
    ),
    ErrorCode.provider_timeout: _info(
        None, True, _JOB, "The remote provider did not answer within `DF_OPENAI_TIMEOUT_SECONDS`."
    ),
    ErrorCode.provider_unavailable: _info(
        None,
        True,
        _JOB,
        "The remote provider kept answering 429 or 5xx (or could not be reached) through every retry "
        "the job's time allowed.",
    ),
    ErrorCode.download_failed: _info(
        502, False, _CLI, "A download failed in a way to act on (an unexpected answer, a redirect loop)."
    ),
    ErrorCode.auth_required: _info(
        502, False, _CLI, "The model source wants a token, or a better one (401, 403, a gated repo)."
    ),
    ErrorCode.checksum_mismatch: _info(
        502, True, _CLI, "The downloaded bytes differ from what the source publishes; they were discarded."
    ),
    ErrorCode.not_a_model: _info(
        502, False, _CLI, "The source sent a web page or an error instead of a safetensors checkpoint."
    ),
    ErrorCode.not_an_upscaler: _info(
        422, False, _CLI, "The file holds no RGB super-resolution model that spandrel recognises."
    ),
    ErrorCode.not_a_checkpoint: _info(
        422,
        False,
        _CLI,
        "The file or Civitai model is not an SDXL checkpoint, though `--kind sdxl-checkpoint` asks for one.",
    ),
    ErrorCode.transfer_failed: _info(
        502, True, _CLI, "Every try of a download failed transiently; running the command again resumes it."
    ),
    ErrorCode.unsafe_file: _info(
        422,
        False,
        _CLI,
        "A file the registry refuses: a pickle file (checkpoint or upscaler), an unsafe name or path.",
    ),
    ErrorCode.model_name_taken: _info(409, False, _CLI, "A model with this name is already registered."),
    ErrorCode.key_name_taken: _info(409, False, _CLI, "An API key with this name exists already."),
    ErrorCode.invalid_response: _info(
        None,
        False,
        _CLIENT,
        "An answer the v1 contract does not allow (a body, an event stream); is the URL a Dream Forge API?",
    ),
    ErrorCode.artifact_mismatch: _info(
        None,
        True,
        _CLIENT,
        "A downloaded artifact's size or SHA-256 differs from its record; nothing was kept.",
    ),
}

# Codes made from an HTTP status: by the API for an HTTP error without a named code, and by the client
# for an error answer that is not an `ErrorResponse` (a proxy's HTML page, S3's XML).
HTTP_STATUS_PATTERN = "http_<status>"


def http_code(status: int) -> str:
    """The code of an HTTP error that has no named code: `http_<status>`, e.g. `http_502`."""
    return f"http_{status}"
