"""Test support: a local HTTP fake of the OpenAI Images API (`POST /v1/images/generations`).

A real HTTP/1.1 server on 127.0.0.1 (stdlib `ThreadingHTTPServer`, free port) answering like the real
service: same path, Bearer auth, JSON shapes, error bodies (`{"error": {"message", "type", "param",
"code"}}`), status codes and headers (`x-request-id`, `openai-processing-ms`, `x-ratelimit-*`), so a real
client (httpx, or the `openai` package) runs unchanged against it through its base URL setting:
`base_url=FakeOpenAI.base_url` (`http://127.0.0.1:PORT/v1`).

Images are real and decodable, of the requested size and format (Pillow; a gradient whose colours vary
per image index, so the `n` images of one answer differ). `gpt-image-1` always answers `b64_json`; the
`dall-e-*` models answer `url` by default, pointing at the fake's own `GET /files/<id>.png`, which, like
the real CDN URL, needs no auth.

Every request is recorded (`FakeOpenAI.requests`). Faults are scripted per request: `fail_next` makes the
next generation requests answer an error status (429 with OpenAI's rate-limit body, 5xx with its
server-error body), `delay_next` makes them wait before answering (interrupted by `stop()`). Auth is
checked first, as the real API does: a request with a bad key gets 401 and consumes no fault or delay.

    with FakeOpenAI() as api:
        api.fail_next(429, retry_after="1")
        ...  # OpenAI(base_url=api.base_url, api_key=api.api_key)
        assert [r.status for r in api.requests] == [429, 200]
"""

from __future__ import annotations

import base64
import io
import json
import math
import secrets
import string
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from loopback_http import LoopbackServer, TrackedHandler
from PIL import Image

__all__ = ["MODELS", "FakeOpenAI", "Recorded", "mask_key"]

_CHUNK = 64 * 1024

GENERATIONS_PATH = "/v1/images/generations"
FILES_PREFIX = "/files/"

MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if "
    "you're accessing the API from your browser and are prompted for a username. You can obtain an API "
    "key from https://platform.openai.com/account/api-keys."
)
SERVER_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"
BAD_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. "
    "If you have trouble figuring out how to fix this, please contact us through our help center at "
    "help.openai.com.)"
)


@dataclass(frozen=True)
class _Model:
    name: str
    max_prompt: int
    max_n: int
    sizes: tuple[str, ...]
    qualities: tuple[str, ...]
    params: frozenset[str]  # the top-level body parameters this model accepts


_COMMON = frozenset({"prompt", "model", "n", "size", "quality", "user"})

MODELS: dict[str, _Model] = {
    "gpt-image-1": _Model(
        "gpt-image-1",
        32000,
        10,
        ("1024x1024", "1536x1024", "1024x1536", "auto"),
        ("low", "medium", "high", "auto"),
        _COMMON | {"output_format", "output_compression", "background", "moderation"},
    ),
    "dall-e-3": _Model(
        "dall-e-3",
        4000,
        1,
        ("1024x1024", "1792x1024", "1024x1792"),
        ("standard", "hd"),
        _COMMON | {"response_format", "style"},
    ),
    "dall-e-2": _Model(
        "dall-e-2",
        1000,
        10,
        ("256x256", "512x512", "1024x1024"),
        ("standard",),
        _COMMON | {"response_format"},
    ),
}
"""The models the fake knows, by name; any other name answers 404 `model_not_found`."""

DEFAULT_MODEL = "dall-e-2"  # what the real API uses when `model` is omitted

# gpt-image-1 output tokens per image, by quality and size (OpenAI's published table).
_GPT_IMAGE_TOKENS = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}

_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def mask_key(key: str) -> str:
    """A key as OpenAI's 401 message shows it: first 3 and last 4 characters, `*` in between.

    Keys too short to hide anything that way are shown as stars only."""
    if len(key) < 12:
        return "*" * len(key)
    return key[:3] + "*" * (len(key) - 7) + key[-4:]


@dataclass
class Recorded:
    """One request the fake received (`headers` has lower-cased names)."""

    method: str
    path: str  # without the query
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # the parsed JSON body; None when the body was empty or not JSON
    raw_body: bytes
    at: float  # time.monotonic() once the request had been read in full
    status: int | None = None  # the status answered; None while pending or if never answered


@dataclass
class _Fault:
    status: int
    retry_after: str | None
    body: dict[str, Any] | None


@dataclass
class _Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


class _ApiError(Exception):
    """An OpenAI-style error answer, raised while validating a request."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code: str | None = None

    def with_code(self, code: str | None) -> _ApiError:
        self.code = code
        return self

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _invalid(param: str | None, message: str, code: str | None) -> _ApiError:
    return _ApiError(400, message, param=param).with_code(code)


def _json_response(status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> _Response:
    body = json.dumps(payload).encode()
    return _Response(status, [("Content-Type", "application/json"), *headers], body)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _wrong_type(param: str, expected: str, value: Any) -> _ApiError:
    return _invalid(
        param,
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
        "invalid_type",
    )


def _supported(values: Iterable[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def _choice(body: dict[str, Any], param: str, allowed: Iterable[str], default: str) -> str:
    value = body.get(param)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _wrong_type(param, "one of " + ", ".join(allowed), value)
    allowed = tuple(allowed)
    if value not in allowed:
        raise _invalid(
            param, f"Invalid value: '{value}'. Supported values are: {_supported(allowed)}.", "invalid_value"
        )
    return value


def _int_in(body: dict[str, Any], param: str, low: int, high: int, default: int) -> int:
    value = body.get(param)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(param, "an integer", value)
    if value < low:
        raise _invalid(
            param,
            f"Invalid '{param}': integer below minimum value. Expected a value >= {low}, but got {value} "
            "instead.",
            "integer_below_min_value",
        )
    if value > high:
        raise _invalid(
            param,
            f"Invalid '{param}': integer above maximum value. Expected a value <= {high}, but got {value} "
            "instead.",
            "integer_above_max_value",
        )
    return value


def _duration(seconds: float) -> str:
    """A duration the way OpenAI's `x-ratelimit-reset-*` headers write it: `120ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def _render(width: int, height: int, index: int, salt: int, fmt: str, transparent: bool) -> bytes:
    """A real image: a horizontal gradient whose colours depend on `index` and `salt`."""
    ramp = Image.linear_gradient("L").rotate(90).resize((width, height), Image.Resampling.BILINEAR)
    flat = Image.new("L", (width, height), (index * 67 + salt * 29 + 40) % 256)
    other = ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT).point(lambda v: (v + index * 97) % 256)
    bands = [ramp, flat, other] if index % 2 == 0 else [other, ramp, flat]
    image = Image.merge("RGB", bands)
    if transparent:
        image.putalpha(ramp)
    out = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(out, "JPEG", quality=85)
    elif fmt == "webp":
        image.save(out, "WEBP", quality=80)
    else:
        image.save(out, "PNG", compress_level=1)
    return out.getvalue()


# --------------------------------------------------------------------------------------------------
# Server plumbing
# --------------------------------------------------------------------------------------------------


class _Server(LoopbackServer):
    def __init__(self, owner: FakeOpenAI) -> None:
        self.owner = owner
        super().__init__(_Handler)


class _Handler(TrackedHandler):
    server_version = "FakeOpenAI/1.0"

    def _srv(self) -> _Server:
        srv = self.server
        assert isinstance(srv, _Server)
        return srv

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def serve(self) -> None:
        srv = self._srv()
        owner = srv.owner
        started = time.monotonic()
        raw = self._read_body()
        split = urlsplit(self.path)
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        rec = Recorded(
            method=self.command,
            path=split.path,
            query={k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            raw_body=raw,
            at=time.monotonic(),
        )
        owner._record(rec)
        try:
            resp = owner._route(rec, raw, started)
        except Exception:
            text = traceback.format_exc()
            owner.server_errors.append(text)
            print(f"fakeopenai: error answering {self.command} {self.path}:\n{text}", file=sys.stderr)
            resp = _json_response(
                500, {"error": {"message": text, "type": "server_error", "param": None, "code": None}}
            )
        if resp is None:  # stopped while delaying: hang up without an answer
            self.close_connection = True
            return
        owner._set_status(rec, resp.status)
        body_out = b"" if self.command == "HEAD" else resp.body
        try:
            self.send_response(resp.status)
            for name, value in resp.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            for start in range(0, len(body_out), _CHUNK):
                self.wfile.write(body_out[start : start + _CHUNK])
            self.wfile.flush()
        except OSError:  # the client went away
            self.close_connection = True


# --------------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------------


def _random_key() -> str:
    alphabet = string.ascii_letters + string.digits
    return "sk-test-" + "".join(secrets.choice(alphabet) for _ in range(40))


class FakeOpenAI:
    """A local fake of the OpenAI Images API; a context manager (or `start()`/`stop()`).

    `api_key` is the only key it accepts (random `sk-test-...` by default). `rate_limit_requests` is
    the per-minute request limit its `x-ratelimit-*` headers describe (a token bucket); the fake never
    enforces it by itself: use `fail_next(429)` for that."""

    def __init__(self, *, api_key: str | None = None, rate_limit_requests: int = 50) -> None:
        self._api_key = api_key if api_key is not None else _random_key()
        self.rate_limit_requests = rate_limit_requests
        self.requests: list[Recorded] = []  # every request received, oldest first
        self.server_errors: list[str] = []  # tracebacks of requests the fake itself failed on (500)
        self._lock = threading.RLock()
        self._faults: deque[_Fault] = deque()
        self._delays: deque[float] = deque()
        self._files: dict[str, tuple[bytes, str]] = {}
        self._bucket = float(rate_limit_requests)
        self._bucket_at = time.monotonic()
        self._salt = 0
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=type(self).__name__,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops the server, hangs up open connections and wakes requests sleeping in `delay_next`."""
        self._stopping.set()
        srv, thread = self._server, self._thread
        self._server = self._thread = None
        if srv is not None:
            srv.shutdown()
            srv.close_connections()
            srv.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def api_key(self) -> str:
        return self._api_key

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__}.start() first")
        return self._server.server_port

    @property
    def url(self) -> str:
        """The server's root, `http://127.0.0.1:PORT` (image URLs live under `/files/`)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as its base URL: `http://127.0.0.1:PORT/v1`."""
        return f"{self.url}/v1"

    # -- recording -----------------------------------------------------------------------------

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)

    def _set_status(self, rec: Recorded, status: int) -> None:
        with self._lock:
            rec.status = status

    def generation_requests(self) -> list[Recorded]:
        """The recorded `POST /v1/images/generations` requests, oldest first."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and r.path == GENERATIONS_PATH]

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- scripted faults -----------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        retry_after: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """The next `times` authenticated generation requests answer `status` (queued after earlier calls).

        429 carries OpenAI's rate-limit error body (and `retry-after` when given), 5xx its server-error
        body, any other status a generic error body; `body` replaces that body. The faulted requests are
        neither validated nor answered with images."""
        with self._lock:
            for _ in range(times):
                self._faults.append(_Fault(status, retry_after, body))

    def delay_next(self, seconds: float, times: int = 1) -> None:
        """The next `times` authenticated generation requests wait `seconds` before answering.

        The wait ends early when the fake stops; the request is then left unanswered (hung up)."""
        with self._lock:
            self._delays.extend([seconds] * times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._delays.clear()

    # -- routing -------------------------------------------------------------------------------

    def _route(self, rec: Recorded, raw: bytes, started: float) -> _Response | None:
        request_id = "req_" + secrets.token_hex(16)
        if rec.path.startswith(FILES_PREFIX) and rec.method in ("GET", "HEAD"):
            return self._file(rec.path[len(FILES_PREFIX) :])
        base = [("x-request-id", request_id), ("openai-version", "2020-10-01")]

        def error(err: _ApiError, extra: Iterable[tuple[str, str]] = ()) -> _Response:
            ms = str(int((time.monotonic() - started) * 1000))
            return _json_response(err.status, err.payload(), [*base, ("openai-processing-ms", ms), *extra])

        auth = self._check_auth(rec)
        if auth is not None:
            return error(auth)
        if rec.path != GENERATIONS_PATH or rec.method != "POST":
            return error(_ApiError(404, f"Invalid URL ({rec.method} {rec.path})"))

        with self._lock:
            fault = self._faults.popleft() if self._faults else None
            delay = self._delays.popleft() if self._delays else 0.0
            limits = self._take_request()
        base += [("openai-organization", "user-fakeopenai"), *limits]
        if delay > 0 and self._stopping.wait(delay):
            return None
        if fault is not None:
            return self._fault_response(fault, error)
        try:
            payload = self._generate(raw)
        except _ApiError as err:
            return error(err)
        ms = str(int((time.monotonic() - started) * 1000))
        return _json_response(200, payload, [*base, ("openai-processing-ms", ms)])

    def _check_auth(self, rec: Recorded) -> _ApiError | None:
        header = rec.headers.get("authorization")
        scheme, _, value = (header or "").strip().partition(" ")
        key = value.strip() if scheme.lower() == "bearer" else ""
        if not key:
            return _ApiError(401, MISSING_KEY_MESSAGE)
        if not secrets.compare_digest(key.encode(), self._api_key.encode()):
            message = (
                f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
            return _ApiError(401, message).with_code("invalid_api_key")
        return None

    def _take_request(self) -> list[tuple[str, str]]:
        """Spends one request from the token bucket; the `x-ratelimit-*` headers after it. Under the lock."""
        limit = self.rate_limit_requests
        now = time.monotonic()
        self._bucket = min(float(limit), self._bucket + (now - self._bucket_at) * limit / 60.0)
        self._bucket_at = now
        self._bucket = max(0.0, self._bucket - 1)
        reset = (limit - self._bucket) * 60.0 / limit if limit else 0.0
        return [
            ("x-ratelimit-limit-requests", str(limit)),
            ("x-ratelimit-remaining-requests", str(int(self._bucket))),
            ("x-ratelimit-reset-requests", _duration(reset)),
        ]

    def _fault_response(
        self, fault: _Fault, error: Callable[[_ApiError, Iterable[tuple[str, str]]], _Response]
    ) -> _Response:
        extra = [("retry-after", fault.retry_after)] if fault.retry_after is not None else []
        if fault.status == 429:
            limit = self.rate_limit_requests
            err = _ApiError(
                429,
                f"Rate limit reached for images per min. Limit: {limit}/1min. Current: {limit + 1}/1min. "
                "Please visit https://platform.openai.com/docs/guides/rate-limits to learn how to increase "
                "your rate limit.",
                type="requests",
            ).with_code("rate_limit_exceeded")
        elif fault.status >= 500:
            err = _ApiError(fault.status, SERVER_ERROR_MESSAGE, type="server_error")
        else:
            try:
                phrase = HTTPStatus(fault.status).phrase
            except ValueError:
                phrase = "Error"
            err = _ApiError(fault.status, phrase)
        resp = error(err, extra)
        if fault.body is not None:
            resp.body = json.dumps(fault.body).encode()
        return resp

    def _file(self, name: str) -> _Response:
        with self._lock:
            found = self._files.get(name)
        if found is None:
            body = (
                b'<?xml version="1.0" encoding="utf-8"?><Error><Code>BlobNotFound</Code>'
                b"<Message>The specified blob does not exist.</Message></Error>"
            )
            return _Response(404, [("Content-Type", "application/xml")], body)
        data, mime = found
        return _Response(200, [("Content-Type", mime), ("Cache-Control", "max-age=3600")], data)

    # -- images/generations --------------------------------------------------------------------

    def _generate(self, raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise _invalid(None, BAD_JSON_MESSAGE, None)

        model_name = body.get("model")
        if model_name is None:
            model_name = DEFAULT_MODEL
        if not isinstance(model_name, str):
            raise _wrong_type("model", "a string", model_name)
        model = MODELS.get(model_name)
        if model is None:
            raise _ApiError(
                404, f"The model `{model_name}` does not exist or you do not have access to it."
            ).with_code("model_not_found")

        for name in body:
            if name not in model.params:
                raise _invalid(name, f"Unknown parameter: '{name}'.", "unknown_parameter")

        prompt = body.get("prompt")
        if prompt is None:
            raise _invalid("prompt", "Missing required parameter: 'prompt'.", "missing_required_parameter")
        if not isinstance(prompt, str):
            raise _wrong_type("prompt", "a string", prompt)
        if not prompt:
            raise _invalid(
                "prompt",
                "Invalid 'prompt': empty string. Expected a string with minimum length 1, but got an empty "
                "string instead.",
                "empty_string",
            )
        if len(prompt) > model.max_prompt:
            raise _invalid(
                "prompt",
                f"Invalid 'prompt': string too long. Expected a string with maximum length "
                f"{model.max_prompt}, but got a string with length {len(prompt)} instead.",
                "string_above_max_length",
            )

        n = _int_in(body, "n", 1, 10, 1)
        if n > model.max_n:
            raise _invalid("n", f"You must provide n={model.max_n} for this model.", "invalid_value")
        size = _choice(body, "size", model.sizes, model.sizes[0])
        quality = _choice(
            body, "quality", model.qualities, "auto" if "auto" in model.qualities else "standard"
        )
        user = body.get("user")
        if user is not None and not isinstance(user, str):
            raise _wrong_type("user", "a string", user)

        with self._lock:
            self._salt += 1
            salt = self._salt
        created = int(time.time())

        if model.name == "gpt-image-1":
            fmt = _choice(body, "output_format", ("png", "jpeg", "webp"), "png")
            _int_in(body, "output_compression", 0, 100, 100)
            background = _choice(body, "background", ("transparent", "opaque", "auto"), "auto")
            _choice(body, "moderation", ("low", "auto"), "auto")
            if background == "transparent" and fmt == "jpeg":
                raise _invalid(
                    "background",
                    "Transparent background is not supported for the jpeg output format. "
                    "Use png or webp instead.",
                    "invalid_value",
                )
            real_size = "1024x1024" if size == "auto" else size
            real_quality = "medium" if quality == "auto" else quality
            width, height = (int(v) for v in real_size.split("x"))
            transparent = background == "transparent"
            images = [_render(width, height, i, salt, fmt, transparent) for i in range(n)]
            text_tokens = max(1, math.ceil(len(prompt) / 4))
            output_tokens = _GPT_IMAGE_TOKENS[real_quality][real_size] * n
            return {
                "created": created,
                "background": "transparent" if transparent else "opaque",
                "data": [{"b64_json": base64.b64encode(img).decode()} for img in images],
                "output_format": fmt,
                "quality": real_quality,
                "size": real_size,
                "usage": {
                    "input_tokens": text_tokens,
                    "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
                    "output_tokens": output_tokens,
                    "total_tokens": text_tokens + output_tokens,
                },
            }

        response_format = _choice(body, "response_format", ("url", "b64_json"), "url")
        if model.name == "dall-e-3":
            _choice(body, "style", ("vivid", "natural"), "vivid")
        width, height = (int(v) for v in size.split("x"))
        data: list[dict[str, Any]] = []
        for i in range(n):
            png = _render(width, height, i, salt, "png", False)
            item: dict[str, Any] = {}
            if model.name == "dall-e-3":
                item["revised_prompt"] = f"A detailed, vivid rendering of the following scene: {prompt}"
            if response_format == "b64_json":
                item["b64_json"] = base64.b64encode(png).decode()
            else:
                file_id = f"img-{secrets.token_urlsafe(18)}.png"
                with self._lock:
                    self._files[file_id] = (png, _MIME["png"])
                item["url"] = f"{self.url}{FILES_PREFIX}{file_id}"
            data.append(item)
        return {"created": created, "data": data}
