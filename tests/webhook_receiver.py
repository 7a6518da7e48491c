"""A webhook receiver for tests: a real HTTP server on loopback that answers as each test scripts it.

Every test POSTs to a path of its own (`receiver.path()`); each request to a path takes the next
scripted answer (the last one repeats): a status code, or `HANG` (sleep far past any read timeout).
`SilentSocket` is a listener that accepts connections and never answers at all.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook

# Answer after this many seconds: past every read timeout the tests set.
HANG = -30


@dataclass
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    def verified(self, secret: str) -> dict[str, Any]:
        """The body, once its Standard Webhooks signature checks out with `secret` (raises otherwise)."""
        return dict(Webhook(secret).verify(self.body, self.headers))


@dataclass
class WebhookReceiver:
    """The HTTP server; `url(path)` is what a job names as its webhook."""

    received: list[Received] = field(default_factory=list)
    _scripts: dict[str, list[int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                answer = receiver._record(self.path, dict(self.headers.items()), body)
                if answer < 0:
                    time.sleep(-answer)
                    answer = 200
                try:
                    self.send_response(answer)
                    if answer in (429, 503):
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # The sender gave up waiting (its read timeout): nobody to answer.

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            self.received.append(Received(path, headers, body, time.monotonic()))
            script = self._scripts.get(path, [200])
            return script.pop(0) if len(script) > 1 else script[0]

    def path(self, *answers: int) -> str:
        """A fresh path whose requests get `answers` in turn (default 200)."""
        path = f"/hooks/{uuid.uuid4().hex}"
        with self._lock:
            self._scripts[path] = list(answers or (200,))
        return path

    def answer(self, path: str, *answers: int) -> None:
        """From now on, requests to `path` get `answers`."""
        with self._lock:
            self._scripts[path] = list(answers)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def at(self, path: str) -> list[Received]:
        """Requests to `path`, in arrival order."""
        with self._lock:
            return [r for r in self.received if r.path == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class SilentSocket:
    """A loopback listener that takes connections and never answers (a receiver that hangs forever)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/hook"

    def close(self) -> None:
        self._sock.close()
