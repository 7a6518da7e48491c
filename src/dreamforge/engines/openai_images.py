"""A remote provider: the OpenAI Images API (`POST {base}/images/generations`), bring your own key.

Chosen over Stability AI's REST API because its one endpoint is also what OpenAI-compatible servers
(LocalAI, vLLM's and others' image endpoints) speak, so `DF_OPENAI_BASE_URL` opens several backends at
once; Stability's `stable-image/generate/*` (multipart, one image per call) is a follow-up adapter.

Only httpx and Pillow are imported: a remote worker runs without torch. The key is sent as the bearer
header of generation requests to the configured base URL and nowhere else (result URLs are fetched
without it), and is scrubbed from every message that leaves this module.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from dreamforge import __version__
from dreamforge.engines.base import (
    OPENAI_IMAGES_PROVIDER,
    EngineError,
    ModelSpec,
    RefineRequest,
    RenderRequest,
    StepCallback,
)
from dreamforge.error_codes import ErrorCode

if TYPE_CHECKING:
    from PIL import Image

PROVIDER = OPENAI_IMAGES_PROVIDER
# While a request is in flight the job's checks (cancel, shutdown, time limit) run this often.
HEARTBEAT_SECONDS = 0.2
# The longest wait between two tries; a `Retry-After` beyond it is honoured up to MAX_RETRY_AFTER.
MAX_BACKOFF_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 300.0


@dataclass(frozen=True)
class ModelLimits:
    """What one hosted model accepts, per OpenAI's API reference."""

    # `WxH` sizes it draws; None: any (an OpenAI-compatible server's own model).
    sizes: tuple[str, ...] | None
    # Images per request (`n`); more are asked for in several requests.
    max_n: int
    # Whether results are asked for as base64 with `response_format` (DALL-E) or always come so (gpt-image-1).
    response_format: bool
    max_prompt: int


LIMITS: dict[str, ModelLimits] = {
    "gpt-image-1": ModelLimits(("1024x1024", "1536x1024", "1024x1536"), 10, False, 32000),
    "dall-e-3": ModelLimits(("1024x1024", "1792x1024", "1024x1792"), 1, True, 4000),
    "dall-e-2": ModelLimits(("256x256", "512x512", "1024x1024"), 10, True, 1000),
}
OTHER_MODEL = ModelLimits(None, 10, True, 4000)


def limits_of(model: str) -> ModelLimits:
    """The limits of `model` (an unknown name is taken to be an OpenAI-compatible server's own)."""
    return LIMITS.get(model, OTHER_MODEL)


def parameters_schema(model: str) -> dict[str, Any]:
    """The JSON Schema of the job fields `model` honours; `x-sizes` lists the `WxH` pairs it draws."""
    limits = limits_of(model)
    side: dict[str, Any] = {"type": "integer"}
    properties: dict[str, Any] = {
        "prompt": {"type": "string", "minLength": 1, "maxLength": limits.max_prompt},
        "count": {"type": "integer", "minimum": 1, "maximum": 100},
        "format": {"type": "string", "enum": ["png", "jpg"]},
    }
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if limits.sizes is not None:
        widths = sorted({int(s.split("x")[0]) for s in limits.sizes})
        heights = sorted({int(s.split("x")[1]) for s in limits.sizes})
        properties["width"] = {**side, "enum": widths}
        properties["height"] = {**side, "enum": heights}
        schema["x-sizes"] = list(limits.sizes)
    else:
        properties["width"] = properties["height"] = side
    return schema


class _Retryable(Exception):
    """An answer worth another try (429, 5xx, a dropped connection), with the wait the server asked for."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(float(value), MAX_RETRY_AFTER_SECONDS) if value else None
    except ValueError:
        return None


class OpenAIImagesEngine:
    """Renders through the OpenAI Images API; stateless between calls, safe to share between threads."""

    def __init__(self, base_url: str, api_key: str | None, *, timeout: float, max_attempts: int) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = api_key or ""
        self.timeout = timeout
        self.max_attempts = max_attempts

    def load(self, model: ModelSpec) -> float:
        """Nothing to load: the model lives at the provider."""
        return 0.0

    def runtime_info(self) -> dict[str, str]:
        """What the recipe records of where the images came from (never the key)."""
        return {"dreamforge": __version__, "provider": PROVIDER, "endpoint": self.base_url}

    def refine(
        self,
        model: ModelSpec,
        request: RenderRequest,
        image: Image.Image,
        seed: int,
        refine: RefineRequest,
        on_step: StepCallback,
    ) -> Image.Image:
        """Not offered: jobs for a remote model cannot ask for `upscale` (refused when created)."""
        raise EngineError(ErrorCode.engine_error, f"{PROVIDER} does not refine images")

    def render(
        self, model: ModelSpec, request: RenderRequest, seeds: Sequence[int], on_step: StepCallback
    ) -> list[Image.Image]:
        """One image per seed (the provider draws its own noise: seeds are not sent), in as few requests
        as the model allows; each request is a step, and the job's checks run while it is in flight."""
        if not self._key:
            raise EngineError(
                ErrorCode.provider_auth_failed, f"{PROVIDER}: no API key is set (OPENAI_API_KEY)"
            )
        limits = limits_of(model.path)
        counts = [min(limits.max_n, len(seeds) - i) for i in range(0, len(seeds), limits.max_n)]
        images: list[Image.Image] = []
        on_step(0, len(counts))
        # One client per call: closing it abandons a request still in flight when the job stops.
        client = httpx.Client(timeout=httpx.Timeout(self.timeout, connect=10.0), trust_env=False)
        pool = ThreadPoolExecutor(1, thread_name_prefix="dreamforge-remote")
        try:
            for done, n in enumerate(counts):
                body: dict[str, Any] = {
                    "model": model.path,
                    "prompt": request.prompt,
                    "n": n,
                    "size": f"{request.width}x{request.height}",
                }
                if limits.response_format:
                    body["response_format"] = "b64_json"

                def beat(done: int = done) -> None:
                    on_step(done, len(counts))

                answer = self._generate(client, pool, body, beat)
                images.extend(self._images(client, pool, answer, beat))
                on_step(done + 1, len(counts))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            client.close()
        return [self._sized(image, request) for image in images[: len(seeds)]]

    def _generate(
        self, client: httpx.Client, pool: ThreadPoolExecutor, body: dict[str, Any], beat: Callable[[], None]
    ) -> dict[str, Any]:
        """POST one generation, retrying 429/5xx/connection errors with backoff (Retry-After honoured)."""
        backoff = wait_exponential_jitter(initial=1, max=MAX_BACKOFF_SECONDS)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            asked = error.retry_after if isinstance(error, _Retryable) else None
            return max(backoff(state), asked or 0.0)

        def sleep(seconds: float) -> None:
            # The job's checks keep running through the backoff: a cancel need not wait for it.
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(left, HEARTBEAT_SECONDS))
                beat()

        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait,
            retry=retry_if_exception_type(_Retryable),
            sleep=sleep,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._post(client, pool, body, beat)
        except _Retryable as exc:
            raise EngineError(
                ErrorCode.provider_unavailable,
                f"{PROVIDER}: {self._scrub(str(exc))} (gave up after {self.max_attempts} tries)",
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _post(
        self, client: httpx.Client, pool: ThreadPoolExecutor, body: dict[str, Any], beat: Callable[[], None]
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._key}", "User-Agent": f"dreamforge/{__version__}"}
        url = f"{self.base_url}/images/generations"
        response = self._in_flight(pool, lambda: client.post(url, json=body, headers=headers), beat)
        if response.status_code == 200:
            return dict(response.json())
        message = self._provider_message(response)
        if response.status_code in (408, 409, 429) or response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}: {message}", _retry_after(response))
        code = (
            ErrorCode.provider_auth_failed
            if response.status_code in (401, 403)
            else ErrorCode.provider_rejected
        )
        raise EngineError(code, f"{PROVIDER} answered HTTP {response.status_code}: {message}")

    def _in_flight(
        self, pool: ThreadPoolExecutor, call: Callable[[], httpx.Response], beat: Callable[[], None]
    ) -> httpx.Response:
        """Make the request on the pool's thread and run the job's checks until it answers."""
        future = pool.submit(call)
        while True:
            try:
                return future.result(timeout=HEARTBEAT_SECONDS)
            except FutureTimeout:
                beat()
            except httpx.TimeoutException:
                raise EngineError(
                    ErrorCode.provider_timeout, f"{PROVIDER} did not answer within {self.timeout:.0f}s"
                ) from None
            except httpx.HTTPError as exc:
                raise _Retryable(self._scrub(f"{type(exc).__name__}: {exc}")) from None

    def _images(
        self, client: httpx.Client, pool: ThreadPoolExecutor, answer: dict[str, Any], beat: Callable[[], None]
    ) -> list[Image.Image]:
        from PIL import Image

        images = []
        for entry in answer.get("data") or []:
            if entry.get("b64_json"):
                data = base64.b64decode(entry["b64_json"])
            elif entry.get("url"):
                # A result URL (a CDN's): fetched without the key.
                url = str(entry["url"])
                response = self._in_flight(pool, lambda url=url: client.get(url), beat)  # type: ignore[misc]
                if response.status_code != 200:
                    raise EngineError(
                        ErrorCode.provider_rejected,
                        f"{PROVIDER}: result URL answered HTTP {response.status_code}",
                    )
                data = response.content
            else:
                continue
            image = Image.open(io.BytesIO(data))
            image.load()
            images.append(image.convert("RGB"))
        if not images:
            raise EngineError(ErrorCode.provider_rejected, f"{PROVIDER} answered without images")
        return images

    @staticmethod
    def _sized(image: Image.Image, request: RenderRequest) -> Image.Image:
        # A compatible server may ignore `size`; the job's images are the size the job asked for.
        if image.size == (request.width, request.height):
            return image
        from PIL import Image

        return image.resize((request.width, request.height), Image.Resampling.LANCZOS)

    def _provider_message(self, response: httpx.Response) -> str:
        """The provider's own error message (OpenAI's `{"error": {"message"}}`), without the key."""
        try:
            error = response.json().get("error")
            message = error.get("message") if isinstance(error, dict) else str(error or "")
        except ValueError:
            message = response.text[:500]
        return self._scrub(message or response.reason_phrase)

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text
