"""`DreamForgeClient`: every v1 endpoint over httpx, returning the API's own pydantic models."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from httpx_sse import SSEError, connect_sse
from pydantic import BaseModel, Field, ValidationError
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from dreamforge import __version__
from dreamforge.api.schemas import (
    Artifact,
    ArtifactListResponse,
    ErrorResponse,
    HealthResponse,
    JobCreatedResponse,
    JobCreateRequest,
    JobStatusResponse,
    LogEvent,
    ModelDescriptor,
    ModelListResponse,
    ProgressResponse,
    ReadinessResponse,
    WebhookDelivery,
    WebhookDeliveryListResponse,
)
from dreamforge.client.errors import ApiStatusError, ApiUnreachable
from dreamforge.client.events import JobEvent, reconnect_delay
from dreamforge.error_codes import ErrorCode
from dreamforge.events.kinds import EventKind
from dreamforge.jobs.state import TERMINAL

DEFAULT_API_BASE = "http://localhost:8001/v1"
# Idle streams get a keep-alive every DF_SSE_PING_SECONDS (15 s by default); silence for this
# long means the connection is dead, and the stream reconnects.
STREAM_READ_TIMEOUT = 60.0
_TRANSIENT_STATUS = {502, 503, 504}

M = TypeVar("M", bound=BaseModel)
JobId = uuid.UUID | str


class JobCreated(JobCreatedResponse):
    """`POST /jobs`'s answer; `replayed` is true when an `Idempotency-Key` returned an existing job."""

    replayed: bool = Field(default=False, exclude=True)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, ApiUnreachable) or (
        isinstance(exc, ApiStatusError) and exc.status in _TRANSIENT_STATUS
    )


def _aware(ts: datetime) -> datetime:
    # The API reads naive timestamps as UTC; the client compares them the same way.
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


class _ApiKeyAuth(httpx.Auth):
    """Sends the API key to the API's own origin only: never to S3 or another host an artifact URL
    names (a presigned URL with a second credential is refused, and the key must not leak)."""

    def __init__(self, key: str, api: httpx.URL) -> None:
        self._header = f"Bearer {key}"
        self._origin = (api.scheme, api.host, api.port)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if (request.url.scheme, request.url.host, request.url.port) == self._origin:
            request.headers["Authorization"] = self._header
        yield request


class DreamForgeClient:
    """A synchronous client for the Dream Forge v1 API.

    `api_base` defaults to `DF_API_BASE`, else `http://localhost:8001/v1`. Every method returns the
    API's pydantic models and raises `ApiStatusError` (the answer's `ErrorResponse` and status) or
    `ApiUnreachable`. Reads, cancels, and creates that carry an `Idempotency-Key` are retried
    `retries` times on connection failures and 502/503/504; other creates are not, as a retry
    could duplicate the job. `api_key` (default `DF_API_KEY`) is sent as `Authorization: Bearer`,
    to the API's origin only.
    """

    def __init__(
        self,
        api_base: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 2,
        stream_reconnects: int = 8,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        api_key: str | None = None,
    ) -> None:
        base = (api_base or os.environ.get("DF_API_BASE") or DEFAULT_API_BASE).rstrip("/")
        url = httpx.URL(base)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"the API base must be an http(s) URL such as {DEFAULT_API_BASE}, not {base!r}")
        self.api_base = base
        # /healthz and /readyz live at the server root, beside /v1.
        self.root = base.removesuffix("/v1") if url.path.endswith("/v1") else str(url.copy_with(path="/"))
        self.timeout = timeout
        self.retries = retries
        self.stream_reconnects = stream_reconnects
        key = api_key or os.environ.get("DF_API_KEY")
        self._http = httpx.Client(
            base_url=base,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers={"User-Agent": f"dreamforge-client/{__version__}", **(headers or {})},
            auth=_ApiKeyAuth(key, url) if key else None,
            transport=transport,
        )

    def __enter__(self) -> DreamForgeClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # --- plumbing -------------------------------------------------------------------------------

    def _send(self, method: str, url: str, *, retry: bool = True, **kwargs: Any) -> httpx.Response:
        def once() -> httpx.Response:
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                raise ApiUnreachable.from_transport(self.api_base, exc) from exc
            if response.is_error:
                raise ApiStatusError.from_response(response)
            return response

        if not retry or self.retries <= 0:
            return once()
        retrying = Retrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential_jitter(multiplier=0.2, jitter=0.2, max=2.0),
            reraise=True,
        )
        return retrying(once)

    @staticmethod
    def _parse(model: type[M], response: httpx.Response) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise ApiStatusError.invalid_body(response, exc) from None

    # --- jobs -----------------------------------------------------------------------------------

    def create_job(
        self, request: JobCreateRequest | Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> JobCreated:
        """Submit a generate job (202); the same `idempotency_key` and body return the same job.

        A mapping is sent as is (`type` defaults to `generate`), so the server validates it.
        """
        if isinstance(request, JobCreateRequest):
            body = request.model_dump(mode="json", exclude_unset=True)
        else:
            body = {"type": "generate", **request}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = self._send("POST", "/jobs", json=body, headers=headers, retry=bool(idempotency_key))
        created = self._parse(JobCreated, response)
        created.replayed = response.headers.get("Idempotent-Replayed") == "true"
        return created

    def get_job(self, job_id: JobId) -> JobStatusResponse:
        """A job's status, item counts and, when it failed, why."""
        return self._parse(JobStatusResponse, self._send("GET", f"/jobs/{job_id}"))

    def cancel_job(self, job_id: JobId) -> JobStatusResponse:
        """Ask the server to stop a job (202); returns the job as it is after the request.

        A queued job is `canceled` at once; a running one stays `running` with
        `cancel_requested_at` set until its worker stops it, within one denoising step (`wait`
        follows it there). Items finished before that keep their artifacts. Cancelling a job that
        is canceled or being canceled is accepted again, so the call is retried like a read; a job
        that already succeeded or failed raises `ApiStatusError` 409 `job_finished`.
        """
        return self._parse(JobStatusResponse, self._send("POST", f"/jobs/{job_id}/cancel"))

    def list_artifacts(self, job_id: JobId) -> ArtifactListResponse:
        """The job's stored images, each with a signed URL valid until `expires_at`."""
        return self._parse(ArtifactListResponse, self._send("GET", f"/jobs/{job_id}/artifacts"))

    def list_webhook_deliveries(self, job_id: JobId) -> WebhookDeliveryListResponse:
        """The job's webhook deliveries, oldest first: each event's attempts, last answer, next attempt."""
        return self._parse(WebhookDeliveryListResponse, self._send("GET", f"/jobs/{job_id}/webhooks"))

    def redeliver_webhook(self, job_id: JobId, delivery_id: JobId) -> WebhookDelivery:
        """Send a delivery again now, with a fresh retry schedule and the same `webhook-id`.

        Receivers de-duplicate by `webhook-id`, so a repeat is harmless and the call is retried like a
        read.
        """
        response = self._send("POST", f"/jobs/{job_id}/webhooks/{delivery_id}/redeliver")
        return self._parse(WebhookDelivery, response)

    def get_logs(
        self, job_id: JobId, *, tail: int | None = None, since: datetime | None = None
    ) -> list[LogEvent]:
        """Log lines, oldest first: the last `tail`, and/or those at or after `since`."""
        params: dict[str, str | int] = {}
        if tail is not None:
            params["tail"] = tail
        if since is not None:
            params["since_ts"] = _aware(since).isoformat()
        response = self._send("GET", f"/jobs/{job_id}/logs", params=params)
        try:
            return [LogEvent.model_validate_json(line) for line in response.text.splitlines() if line.strip()]
        except ValidationError as exc:
            raise ApiStatusError.invalid_body(response, exc) from None

    def get_progress(self, job_id: JobId) -> ProgressResponse:
        """Overall and per-item progress."""
        return self._parse(ProgressResponse, self._send("GET", f"/jobs/{job_id}/progress"))

    def stream_events(self, job_id: JobId, *, last_event_id: int | None = None) -> Iterator[JobEvent]:
        """The job's events (history first, then live) until `done`, reconnecting when a connection drops.

        Each reconnect sends `Last-Event-ID`, so no event is lost or repeated. After
        `stream_reconnects` failed reconnects in a row (`retries` if it never connected) it raises
        `ApiUnreachable`.
        """
        cursor = last_event_id
        failures = 0
        connected = False
        while True:
            headers = {"Last-Event-ID": str(cursor)} if cursor is not None else {}
            try:
                with connect_sse(
                    self._http,
                    "GET",
                    f"/jobs/{job_id}/progress/stream",
                    headers=headers,
                    timeout=httpx.Timeout(self.timeout, read=STREAM_READ_TIMEOUT),
                ) as source:
                    if source.response.is_error:
                        source.response.read()
                        raise ApiStatusError.from_response(source.response)
                    connected = True
                    for sse in source.iter_sse():
                        if not sse.data:
                            # A keep-alive comment: httpx-sse 0.4 reports it as an empty event once
                            # an id was seen (florimondmanca/httpx-sse#35); the SSE spec dispatches
                            # nothing for an empty data buffer.
                            continue
                        failures = 0
                        try:
                            event = JobEvent(id=int(sse.id), event=sse.event, data=sse.json())
                        except (ValueError, ValidationError) as exc:
                            raise ApiStatusError(
                                source.response.status_code,
                                ErrorResponse(
                                    code=ErrorCode.invalid_response,
                                    message=f"unexpected event on the progress stream: {sse.event} {sse.id}",
                                    details={"error": str(exc)[:300]},
                                ),
                            ) from None
                        cursor = event.id
                        yield event
                        if event.event == EventKind.done:
                            return
                # The server ended the stream before `done` (a restart): resume where it stopped.
                reason = "the stream closed before the job finished"
            except httpx.TransportError as exc:
                reason = ApiUnreachable.from_transport(self.api_base, exc).reason
            except SSEError as exc:
                raise ApiStatusError(
                    200,
                    ErrorResponse(code=ErrorCode.invalid_response, message=f"not an event stream: {exc}"),
                ) from None
            except ApiStatusError as exc:
                if exc.status not in _TRANSIENT_STATUS:
                    raise
                reason = exc.error.message
            failures += 1
            # Patience is for a stream that was flowing; an API that never answered fails as fast
            # as any other call.
            if failures > (self.stream_reconnects if connected else self.retries):
                raise ApiUnreachable(self.api_base, f"{reason} (gave up after {failures} tries)")
            time.sleep(reconnect_delay(failures))

    def follow_logs(
        self, job_id: JobId, *, tail: int | None = None, since: datetime | None = None
    ) -> Iterator[LogEvent]:
        """Like `get_logs`, then each new line as it is written, until the job ends."""
        initial = self.get_logs(job_id, tail=tail, since=since)
        yield from initial
        cursor = initial[-1].id if initial else None
        for event in self.stream_events(job_id, last_event_id=cursor):
            if event.event != EventKind.log:
                continue
            line = event.as_log()
            if cursor is None and since is not None and line.ts < _aware(since):
                continue
            yield line

    def wait(self, job_id: JobId, *, on_event: Callable[[JobEvent], None] | None = None) -> JobStatusResponse:
        """Follow the job's event stream until it ends; returns its final status.

        The final status is `succeeded`, `failed` or `canceled` (`dreamforge.jobs.state.TERMINAL`).
        """
        for event in self.stream_events(job_id):
            if on_event is not None:
                on_event(event)
        status = self.get_job(job_id)
        if status.status not in TERMINAL:
            # `done` was seen, so the job is terminal; a replica lagging behind would say otherwise.
            raise ApiStatusError(
                200,
                ErrorResponse(
                    code=ErrorCode.invalid_response,
                    message=f"the stream ended but the job is {status.status.value}",
                ),
            )
        return status

    def download_artifact(
        self, artifact: Artifact, path: Path, *, on_bytes: Callable[[int], None] | None = None
    ) -> int:
        """Save an artifact's bytes to `path` through its signed URL; returns the size.

        The file appears only complete: it is written as `<path>.part` and renamed once its size
        and SHA-256 match the artifact record.
        """
        if not artifact.url:
            raise ApiStatusError(
                404, ErrorResponse(code=ErrorCode.not_found, message=f"artifact {artifact.id} has no URL")
            )
        part = path.with_name(path.name + ".part")
        digest = hashlib.sha256()
        size = 0
        try:
            with self._http.stream("GET", artifact.url) as response:
                if response.is_error:
                    response.read()
                    raise ApiStatusError.from_response(response)
                with part.open("wb") as f:
                    for chunk in response.iter_bytes(1 << 16):
                        f.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                        if on_bytes is not None:
                            on_bytes(len(chunk))
        except httpx.TransportError as exc:
            part.unlink(missing_ok=True)
            where = str(httpx.URL(artifact.url).copy_with(query=None))
            raise ApiUnreachable.from_transport(where, exc) from exc
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        expected = (artifact.size_bytes, artifact.sha256)
        if (artifact.size_bytes is not None and size != artifact.size_bytes) or (
            artifact.sha256 is not None and digest.hexdigest() != artifact.sha256
        ):
            part.unlink(missing_ok=True)
            raise ApiStatusError(
                response.status_code,
                ErrorResponse(
                    code=ErrorCode.artifact_mismatch,
                    message=f"artifact {artifact.item_index} arrived damaged (size or SHA-256 differ)",
                    details={"expected": list(expected), "received": [size, digest.hexdigest()]},
                ),
            )
        os.replace(part, path)
        return size

    # --- models and health ----------------------------------------------------------------------

    def list_models(self, *, enabled: bool = True) -> ModelListResponse:
        """Installed models jobs can use (`enabled=False`: the disabled ones)."""
        response = self._send("GET", "/models", params={"enabled": str(enabled).lower()})
        return self._parse(ModelListResponse, response)

    def get_model(self, model_id: JobId) -> ModelDescriptor:
        """One model with its capabilities and provenance."""
        return self._parse(ModelDescriptor, self._send("GET", f"/models/{model_id}"))

    def health(self) -> HealthResponse:
        """Liveness of the API process."""
        return self._parse(HealthResponse, self._send("GET", f"{self.root}/healthz"))

    def ready(self) -> ReadinessResponse:
        """Readiness; raises `ApiStatusError` 503 `not_ready` naming the dependencies that failed."""
        return self._parse(ReadinessResponse, self._send("GET", f"{self.root}/readyz", retry=False))
