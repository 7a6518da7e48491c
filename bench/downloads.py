"""Downloads: the model downloader against `curl`, its resume, and its hashing against `sha256sum`.

A 200 MB safetensors file of random bytes (20 MB with BENCH_SMOKE=1) is served from loopback by a
separate server process (this script's `serve` mode: a threaded stdlib server that answers Range requests
with `os.sendfile`, so it is never what limits either client). The server answers like Civitai: the
version's JSON, a 307 from the download endpoint to a presigned-looking "CDN" URL, and the file with
Content-Length, ETag and Content-Range. It counts the body bytes it sends per request. (The tests'
`FakeCivitai` is not used: it runs in the caller's process, so it would share the GIL with the client
being measured, and it writes an in-memory copy in 64 KiB pieces.)

- `downloads.throughput`: per round, interleaved (order alternating), `curl -L -o` of the download URL
  against our downloader fetching the same URL; ratio = curl's time / ours. Ours is the Civitai path of
  `dreamforge model download` up to the file being verified on disk: `CivitaiSource.version` (the JSON),
  then `Transfer.fetch` (the redirect, the streamed `.part` file hashed as it arrives, the size and SHA-256
  check, the safetensors header check, the rename), with the CLI's httpx client settings and its plain
  (non-terminal) progress sink. Each round makes a new client, as each CLI run does, outside the timing:
  building one loads the CA bundle (~50 ms, once per run), which moves no bytes. `ModelDownloader.download`
  itself is not run: after the bytes it only reads the header to tell the kind, fetches the SDXL config
  files from the Hub and registers the model in the database, none of which moves the checkpoint's bytes,
  and it would need a real SDXL checkpoint and a fake Hub. Target: >= 0.9 of curl.
- `downloads.resume`: two interruptions, each followed by a download that must finish the file. "drop":
  the server hangs up after half the file and the downloader's own retry resumes it. "kill": the server
  stalls after half the file, the downloading process is SIGKILLed once its `.part` file holds what was
  sent, and a new run resumes it. Bytes fetched again = what the server sent in all - the file's size;
  target: <= 1 MiB in each.
- `downloads.hashing`: `sha256sum FILE` against `dreamforge.registry.hashing.sha256_file` on the same
  file, interleaved, page cache warm; ratio = sha256sum's time / ours. Target: >= 0.9 of sha256sum.
  `openssl dgst -sha256` is timed too, as context only (the details' `openssl_dgst_mb_s`).

    python bench/downloads.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import httpx
from common import SMOKE, Result, free_port, median, process, record
from rich.console import Console

from dreamforge.cli.progress import PlainProgress
from dreamforge.registry.civitai import CivitaiSource
from dreamforge.registry.hashing import sha256_file
from dreamforge.registry.refs import CivitaiRef
from dreamforge.registry.transfer import FetchedFile, Transfer

MB = 1_000_000
MiB = 1024 * 1024
VERSION_ID = 4242
FILENAME = "model.safetensors"
CDN_PATH = f"/cdn/{FILENAME}"
_SENDFILE_CHUNK = 8 * MiB
_STALL_MAX_SECONDS = 60.0

# --------------------------------------------------------------------------------------------------
# The server (its own process, so it never shares a GIL with the client being measured)
# --------------------------------------------------------------------------------------------------


@dataclass
class _Sent:
    range: str | None
    status: int
    sent: int = 0


class _FileServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, port: int, path: Path, sha256: str) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.sha256 = sha256
        self.lock = threading.Lock()
        self.log: list[_Sent] = []
        self.in_flight = 0
        self.fault: tuple[str, int] | None = None  # ("drop" | "stall", after this many bytes): next GET
        super().__init__(("127.0.0.1", port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host's FQDN, which can stall without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = int(self.socket.getsockname()[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, delayed ACKs can add ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def _srv(self) -> _FileServer:
        return cast(_FileServer, self.server)

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        srv = self._srv
        url = urlsplit(self.path)
        host = f"127.0.0.1:{srv.server_port}"
        if url.path == "/healthz":
            self._answer(200, b"ok", {"Content-Type": "text/plain"})
        elif url.path == f"/api/v1/model-versions/{VERSION_ID}":
            self._answer(200, json.dumps(_version_json(f"http://{host}", srv)).encode())
        elif url.path == f"/api/download/models/{VERSION_ID}":
            # Another host name, so another origin, as Civitai's redirect to its storage is.
            location = f"http://localhost:{srv.server_port}{CDN_PATH}?X-Amz-Signature=bench"
            self._answer(307, b"", {"Location": location, "Content-Type": "text/plain"})
        elif url.path == CDN_PATH:
            self._send_file()
        elif url.path == "/control/sent":
            self._wait_idle()
            with srv.lock:
                sent = [vars(s) for s in srv.log]
            self._answer(200, json.dumps({"requests": sent, "total": sum(s["sent"] for s in sent)}).encode())
        else:
            self._answer(404, b'{"error": "Not Found"}')

    def do_POST(self) -> None:
        srv = self._srv
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with srv.lock:
            if url.path == "/control/reset":
                srv.log.clear()
                srv.fault = None
            elif url.path == "/control/fault":
                srv.fault = (query["mode"], int(query["after"]))
        self._answer(204 if url.path.startswith("/control/") else 404, b"")

    def _wait_idle(self) -> None:
        # A client can see a body end before the sending thread has counted its last bytes.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self._srv.lock:
                if self._srv.in_flight == 0:
                    return
            time.sleep(0.01)

    def _send_file(self) -> None:
        srv = self._srv
        first = 0
        status = 200
        wanted = self.headers.get("Range")
        if wanted is not None and (match := re.fullmatch(r"\s*bytes=(\d+)-\s*", wanted)):
            first, status = int(match.group(1)), 206
            if first >= srv.size:
                self._answer(416, b"", {"Content-Range": f"bytes */{srv.size}"})
                return
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(srv.size - first))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{srv.sha256[:32]}"')
        self.send_header("Content-Disposition", f'attachment; filename="{FILENAME}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{srv.size - 1}/{srv.size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        entry = _Sent(wanted, status)
        with srv.lock:
            fault, srv.fault = srv.fault, None
            srv.log.append(entry)
            srv.in_flight += 1
        end = srv.size if fault is None else max(first, min(srv.size, fault[1]))
        try:
            with srv.path.open("rb") as f:
                offset = first
                while offset < end:
                    n = os.sendfile(
                        self.connection.fileno(), f.fileno(), offset, min(end - offset, _SENDFILE_CHUNK)
                    )
                    if n == 0:
                        break
                    offset += n
                    with srv.lock:
                        entry.sent += n
        except OSError:  # the client went away
            self.close_connection = True
        finally:
            with srv.lock:
                srv.in_flight -= 1
        if fault is None:
            return
        self.close_connection = True
        if fault[0] == "stall":
            # A hung connection: nothing more is sent until the client gives up (or is killed).
            with contextlib.suppress(OSError):
                select.select([self.connection], [], [], _STALL_MAX_SECONDS)
        with contextlib.suppress(OSError):
            # FIN after what was sent: the client reads a short body, then the end.
            self.connection.shutdown(socket.SHUT_WR)


def _version_json(base: str, srv: _FileServer) -> dict[str, Any]:
    """What Civitai's `GET /api/v1/model-versions/{id}` answers, as far as the downloader reads it."""
    return {
        "id": VERSION_ID,
        "modelId": 7,
        "name": "v1.0",
        "baseModel": "SDXL 1.0",
        "model": {"name": "Bench Model", "type": "Checkpoint"},
        "files": [
            {
                "id": 1,
                "name": FILENAME,
                "type": "Model",
                "primary": True,
                "sizeKB": srv.size / 1024,
                "metadata": {"format": "SafeTensor", "fp": "fp16", "size": "pruned"},
                "hashes": {"SHA256": srv.sha256.upper(), "AutoV2": srv.sha256[:10].upper()},
                "downloadUrl": f"{base}/api/download/models/{VERSION_ID}",
            }
        ],
    }


def serve(path: Path, port: int, sha256: str) -> None:
    with _FileServer(port, path, sha256) as srv:
        srv.serve_forever(poll_interval=0.05)


# --------------------------------------------------------------------------------------------------
# The client side
# --------------------------------------------------------------------------------------------------


def make_payload(path: Path, size: int) -> str:
    """A well-formed safetensors file of `size` bytes (one U8 tensor of random bytes); its SHA-256."""
    n = size
    while True:
        header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
        header += b" " * (-len(header) % 8)
        if 8 + len(header) + n == size:
            break
        n = size - 8 - len(header)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for piece in (struct.pack("<Q", len(header)), header):
            f.write(piece)
            digest.update(piece)
        left = n
        while left:
            chunk = os.urandom(min(left, 8 * MiB))
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def cli_client() -> httpx.Client:
    """The client `dreamforge model download` makes (building it loads the CA bundle: ~50 ms, untimed)."""
    return httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0))


def our_download(endpoint: str, root: Path, client: httpx.Client) -> FetchedFile:
    """`dreamforge model download civitai:VERSION_ID` up to the verified file: the JSON, then the transfer."""
    # The CLI's sink for a non-terminal stderr (PlainProgress: a line every few seconds).
    with open(os.devnull, "w") as devnull:
        progress = PlainProgress(Console(file=devnull))
        source = CivitaiSource(client, endpoint=endpoint, token=None, backoff_initial=0.05)
        version = source.version(CivitaiRef(VERSION_ID))
        return Transfer(client, backoff_initial=0.05).fetch(version.file, root, progress)


def _post(endpoint: str, path: str) -> None:
    httpx.post(f"{endpoint}{path}", timeout=10).raise_for_status()


def _sent(endpoint: str) -> dict[str, Any]:
    return dict(httpx.get(f"{endpoint}/control/sent", timeout=10).json())


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def throughput(endpoint: str, size: int, sha256: str, work: Path, rounds: int) -> Result:
    url = f"{endpoint}/api/download/models/{VERSION_ID}"
    curl_out = work / "curl.bin"
    ours_root = work / "ours"

    def run_curl() -> float:
        elapsed = _timed(["curl", "-sS", "--fail", "-L", "-o", str(curl_out), url])
        assert curl_out.stat().st_size == size, "curl fetched a short file"
        curl_out.unlink()
        return elapsed

    def run_ours() -> float:
        # A new client per round, as each CLI run has: its connection is made within the timing.
        with cli_client() as client:
            started = time.perf_counter()
            got = our_download(endpoint, ours_root, client)
            elapsed = time.perf_counter() - started
        assert (got.size, got.sha256) == (size, sha256), "our download is not the file"
        got.path.unlink()
        return elapsed

    run_curl()  # untimed: the first connection and reads of the file, for neither to pay alone
    curl_s: list[float] = []
    ours_s: list[float] = []
    for i in range(rounds):
        # Alternating who goes first, so page-cache writeback of the last file hits both alike.
        if i % 2 == 0:
            curl_s.append(run_curl())
            ours_s.append(run_ours())
        else:
            ours_s.append(run_ours())
            curl_s.append(run_curl())
    return _versus(
        "downloads.throughput",
        size,
        ours_s,
        {"curl": curl_s},
        measured="CivitaiSource.version + Transfer.fetch (307, hash, verify), PlainProgress",
    )


def _resume_drop(endpoint: str, size: int, sha256: str, work: Path) -> dict[str, Any]:
    root = work / "drop"
    _post(endpoint, "/control/reset")
    _post(endpoint, f"/control/fault?mode=drop&after={size // 2}")
    return _download_to_the_end(endpoint, root, size, sha256)


def _resume_kill(endpoint: str, size: int, sha256: str, work: Path) -> dict[str, Any]:
    root = work / "kill"
    part = root / f"{FILENAME}.part"
    half = size // 2
    _post(endpoint, "/control/reset")
    _post(endpoint, f"/control/fault?mode=stall&after={half}")
    command = [sys.executable, str(Path(__file__).resolve()), "fetch", endpoint, str(root)]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        # Killed once the part file holds all that was sent (or it stops growing): what a user who
        # gives up on a hung download and presses Ctrl-C twice, or whose machine dies, leaves behind.
        deadline = time.monotonic() + 30
        last, still_since = -1, time.monotonic()
        while time.monotonic() < deadline and proc.poll() is None:
            have = part.stat().st_size if part.exists() else 0
            if have != last:
                last, still_since = have, time.monotonic()
            if have >= half or (have > 0 and time.monotonic() - still_since > 2):
                break
            time.sleep(0.02)
        if proc.poll() is not None:
            raise RuntimeError(
                f"the download to be killed ended early: {proc.stderr.read() if proc.stderr else ''}"
            )
        kept_at_kill = part.stat().st_size if part.exists() else 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
    return {**_download_to_the_end(endpoint, root, size, sha256), "part_bytes_at_kill": kept_at_kill}


def _download_to_the_end(endpoint: str, root: Path, size: int, sha256: str) -> dict[str, Any]:
    """Run our downloader into `root` until the file is whole and verified; what the server sent."""
    with cli_client() as client:
        got = our_download(endpoint, root, client)
    assert (got.size, got.sha256) == (size, sha256), "the resumed download is not the file"
    got.path.unlink()
    sent = _sent(endpoint)
    return {
        "refetched_bytes": int(sent["total"]) - size,
        "requests": sent["requests"],
        "received_in_run": got.fetched_bytes,
    }


def resume(endpoint: str, size: int, sha256: str, work: Path) -> Result:
    drop = _resume_drop(endpoint, size, sha256, work)
    kill = _resume_kill(endpoint, size, sha256, work)
    worst = max(drop["refetched_bytes"], kill["refetched_bytes"])
    return Result(
        name="downloads.resume",
        ratio=worst / MiB,
        target="<= 1 MiB fetched again",
        passed=worst <= MiB,
        unit="bytes fetched again",
        median=float(worst),
        details={"size_bytes": size, "drop": drop, "kill": kill},
    )


def hashing(path: Path, size: int, sha256: str, rounds: int) -> Result:
    # Warm: both read from the page cache, so this compares hashing, not the disk.
    subprocess.run(["cat", str(path)], check=True, stdout=subprocess.DEVNULL)
    tool_s: list[float] = []
    ours_s: list[float] = []

    def run_tool() -> None:
        started = time.perf_counter()
        out = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True).stdout
        tool_s.append(time.perf_counter() - started)
        assert out.split()[0] == sha256

    def run_ours() -> None:
        started = time.perf_counter()
        digest = sha256_file(path)
        ours_s.append(time.perf_counter() - started)
        assert digest == sha256

    for i in range(rounds):
        for run in (run_tool, run_ours) if i % 2 == 0 else (run_ours, run_tool):
            run()
    # Not the target, only context: coreutils may lack the SHA extensions OpenSSL (and hashlib) use.
    openssl_s: list[float] = []
    if shutil.which("openssl"):
        for _ in range(rounds):
            openssl_s.append(_timed(["openssl", "dgst", "-sha256", str(path)]))
    return _versus("downloads.hashing", size, ours_s, {"sha256sum": tool_s, "openssl_dgst": openssl_s})


@contextmanager
def file_server(path: Path, sha256: str, log: Path) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "serve", str(path), str(port), sha256]
    with process(command, {}, f"http://127.0.0.1:{port}/healthz", log):
        yield f"http://127.0.0.1:{port}"


def bench(rounds: int) -> None:
    size = 20 * MB if SMOKE else 200 * MB
    with tempfile.TemporaryDirectory(prefix="df-bench-dl-") as tmp:
        work = Path(tmp)
        payload = work / "payload.safetensors"
        sha256 = make_payload(payload, size)
        with file_server(payload, sha256, work / "server.log") as endpoint:
            results = [
                throughput(endpoint, size, sha256, work, rounds),
                resume(endpoint, size, sha256, work),
            ]
        results.append(hashing(payload, size, sha256, rounds))
    for result in results:
        record(result)


def _versus(
    name: str, size: int, ours_s: list[float], references: dict[str, list[float]], **notes: str
) -> Result:
    """Our throughput over the first reference tool's, round by round (>= 0.9 passes); the other
    references are context only."""
    tool, tool_s = next(iter(references.items()))
    ratios = [t / o for t, o in zip(tool_s, ours_s, strict=True)]
    ratio = median(ratios)
    speeds = {f"{key}_mb_s": [round(size / MB / t, 1) for t in times] for key, times in references.items()}
    return Result(
        name=name,
        ratio=ratio,
        target=f">= 0.9 of {tool}",
        passed=ratio >= 0.9,
        unit="MB/s",
        median=median([size / MB / t for t in ours_s]),
        details={
            "size_bytes": size,
            "ours_mb_s": [round(size / MB / t, 1) for t in ours_s],
            **speeds,
            "ratios": [round(r, 3) for r in ratios],
            **notes,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=1 if SMOKE else 5)
    roles = parser.add_subparsers(dest="role")
    serving = roles.add_parser("serve", help="(internal) serve FILE on PORT")
    serving.add_argument("file", type=Path)
    serving.add_argument("port", type=int)
    serving.add_argument("sha256")
    fetching = roles.add_parser("fetch", help="(internal) download from ENDPOINT into ROOT")
    fetching.add_argument("endpoint")
    fetching.add_argument("root", type=Path)
    args = parser.parse_args()
    if args.role == "serve":
        serve(args.file, args.port, args.sha256)
    elif args.role == "fetch":
        with cli_client() as client:
            our_download(args.endpoint, args.root, client)
    else:
        bench(args.rounds)


if __name__ == "__main__":
    main()
