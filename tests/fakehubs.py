"""Test support: local HTTP fakes of the Hugging Face Hub and of Civitai, for the model downloader.

Each fake is a real HTTP/1.1 server on 127.0.0.1 (stdlib `ThreadingHTTPServer`, free port) answering
like the real service: same paths, redirects, headers, JSON shapes and error codes, so the real
downloader code (and huggingface_hub itself) runs against it through a base-URL setting:
`HF_ENDPOINT=FakeHub.url` for the Hub, `DF_CIVITAI_ENDPOINT=FakeCivitai.url` for Civitai.

Large-file bytes come from each fake's own second server, its "CDN". URLs pointing at the CDN use the
hostname `localhost` while the API's own URLs use `127.0.0.1`, so a redirect to the CDN changes host and
origin, as a redirect to S3 or Cloudflare does (a client must not forward its token there). The CDN
answers only URLs carrying an `X-Amz-Signature` query parameter (403 otherwise), like a presigned URL.

Files live in memory. Every request is logged as a `Hit`. Faults can be injected per file name (a
repo path or its basename for the Hub, the file name for Civitai): they change what a GET of the
file's bytes returns; a HEAD always describes the real file.

    with FakeHub() as hub:
        sha = hub.add_repo("acme/tiny", {"model_index.json": b"{}", "unet/w.safetensors": blob})
        hub.drop_once("w.safetensors", after_bytes=1000)
        ...  # HF_ENDPOINT=hub.url
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mimetypes
import re
import secrets
import socket
import sys
import threading
import traceback
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from loopback_http import LoopbackServer, TrackedHandler

__all__ = ["FakeCivitai", "FakeHub", "Hit"]

_CHUNK = 64 * 1024

LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx", ".msgpack", ".h5")

CHALLENGE_HTML = (
    b'<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>'
    b'<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">'
    b'<meta name="robots" content="noindex,nofollow"></head><body>'
    b'<div class="main-wrapper" role="main"><div class="main-content">'
    b"<h1>Checking if the site connection is secure</h1>"
    b"<p>Enable JavaScript and cookies to continue</p>"
    b"<noscript>Please enable JavaScript to proceed.</noscript>"
    b"</div></div><script>window._cf_chl_opt={cType:'managed'};</script></body></html>"
)


@dataclass
class Hit:
    """One request a fake answered (`server` is "api" or "cdn"; `headers` has lower-cased names)."""

    server: str
    method: str
    path: str  # as sent on the wire (still percent-encoded), without the query
    query: dict[str, str]
    headers: dict[str, str]
    status: int
    range: str | None
    bytes_sent: int  # body bytes actually written


# --------------------------------------------------------------------------------------------------
# Plumbing shared by both fakes
# --------------------------------------------------------------------------------------------------


@dataclass
class _Request:
    server: str
    method: str
    raw_path: str
    query: dict[str, str]
    query_all: dict[str, list[str]]
    headers: dict[str, str]

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass
class _Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    drop_after: int | None = None  # send only this many body bytes, then close the connection


class _Unsatisfiable(Exception):
    pass


def _parse_range(header: str | None, total: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=` range; None to serve the whole file (no or ignored Range)."""
    if header is None:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if match is None or (not match.group(1) and not match.group(2)):
        return None  # absent, malformed or multi-range: ignored, like most servers do
    first_s, last_s = match.groups()
    if not first_s:  # suffix range: the last N bytes
        suffix = int(last_s)
        if suffix == 0 or total == 0:
            raise _Unsatisfiable
        return max(0, total - suffix), total - 1
    first = int(first_s)
    if first >= total:
        raise _Unsatisfiable
    last = int(last_s) if last_s else total - 1
    if last < first:
        return None  # syntactically invalid: ignored (RFC 9110)
    return first, min(last, total - 1)


def _json_response(status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> _Response:
    body = json.dumps(payload).encode()
    return _Response(status, [("Content-Type", "application/json; charset=utf-8"), *headers], body)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _access_denied() -> _Response:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
        b"<Message>Query-string authentication requires the Signature, Expires and AWSAccessKeyId "
        b"parameters</Message></Error>"
    )
    return _Response(403, [("Content-Type", "application/xml")], body)


class _Server(LoopbackServer):
    def __init__(self, owner: _FakeBase, role: str) -> None:
        self.owner = owner
        self.role = role
        super().__init__(_Handler)


class _Handler(TrackedHandler):
    server_version = "FakeHubs/1.0"

    def _srv(self) -> _Server:
        srv = self.server
        assert isinstance(srv, _Server)
        return srv

    def serve(self) -> None:
        srv = self._srv()
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)
        split = urlsplit(self.path)
        query_all = parse_qs(split.query, keep_blank_values=True)
        req = _Request(
            server=srv.role,
            method=self.command,
            raw_path=split.path,
            query={k: v[-1] for k, v in query_all.items()},
            query_all=query_all,
            headers={k.lower(): v for k, v in self.headers.items()},
        )
        try:
            resp = srv.owner._route(req)
        except Exception:
            text = traceback.format_exc()
            srv.owner.server_errors.append(text)
            print(f"fakehubs: error answering {req.method} {self.path}:\n{text}", file=sys.stderr)
            resp = _json_response(500, {"error": "Internal Error", "traceback": text})

        body = b"" if self.command == "HEAD" else resp.body
        if resp.drop_after is not None:
            body = body[: resp.drop_after]
        # Logged before the body goes out, so a client that has read it all always finds its hit.
        hit = Hit(
            server=req.server,
            method=req.method,
            path=req.raw_path,
            query=dict(req.query),
            headers=dict(req.headers),
            status=resp.status,
            range=req.range,
            bytes_sent=len(body),
        )
        srv.owner._log(hit)
        sent = 0
        try:
            self.send_response(resp.status)
            for name, value in resp.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            for start in range(0, len(body), _CHUNK):
                chunk = body[start : start + _CHUNK]
                self.wfile.write(chunk)
                sent += len(chunk)
            self.wfile.flush()
        except OSError:  # the client went away
            self.close_connection = True
        if sent != len(body):
            srv.owner._set_bytes_sent(hit, sent)
        if resp.drop_after is not None:
            # An orderly close (FIN) mid-body: the client sees a short body (httpx: RemoteProtocolError).
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


class _FakeBase:
    """Servers, request log and fault injection shared by FakeHub and FakeCivitai."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.server_errors: list[str] = []  # tracebacks of requests the fake itself failed on (500)
        self._lock = threading.RLock()
        self._hits: list[Hit] = []
        self._drops: dict[str, list[int]] = {}
        self._instead: dict[str, bytes] = {}
        self._html: set[str] = set()
        self._rate_limit_left = 0
        self._retry_after = 1
        self._api: _Server | None = None
        self._cdn: _Server | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        if self._api is not None:
            return self
        self._api = _Server(self, "api")
        self._cdn = _Server(self, "cdn")
        for srv in (self._api, self._cdn):
            thread = threading.Thread(
                target=srv.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"{type(self).__name__}-{srv.role}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        servers = [s for s in (self._api, self._cdn) if s is not None]
        self._api = self._cdn = None
        for srv in servers:
            srv.shutdown()
            srv.close_connections()
            srv.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._api is None:
            raise RuntimeError(f"{type(self).__name__}.start() first")
        return self._api.server_port

    @property
    def cdn_port(self) -> int:
        if self._cdn is None:
            raise RuntimeError(f"{type(self).__name__}.start() first")
        return self._cdn.server_port

    @property
    def url(self) -> str:
        """The API's base URL, `http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn_url(self) -> str:
        """The CDN's base URL: another host name (`localhost`) and port, so another origin."""
        return f"http://localhost:{self.cdn_port}"

    # -- request log ---------------------------------------------------------------------------

    def _log(self, hit: Hit) -> None:
        with self._lock:
            self._hits.append(hit)

    def _set_bytes_sent(self, hit: Hit, sent: int) -> None:
        with self._lock:
            hit.bytes_sent = sent

    def hits(self, server: str | None = None, path_contains: str | None = None) -> list[Hit]:
        """Requests answered so far, oldest first (copies), optionally only one server's or matching paths."""
        with self._lock:
            return [
                replace(h, query=dict(h.query), headers=dict(h.headers))
                for h in self._hits
                if (server is None or h.server == server)
                and (path_contains is None or path_contains in h.path or path_contains in unquote(h.path))
            ]

    def clear_hits(self) -> None:
        with self._lock:
            self._hits.clear()

    # -- fault injection -----------------------------------------------------------------------

    def drop_once(self, filename: str, after_bytes: int) -> None:
        """The next GET of the file's bytes announces the full length, sends `after_bytes`, then hangs up.

        Queued: calling it twice breaks the next two GETs."""
        with self._lock:
            self._drops.setdefault(filename, []).append(after_bytes)

    def serve_instead(self, filename: str, data: bytes) -> None:
        """Persistent: GETs of the file's bytes serve `data` (with its real length).

        All metadata (sizes, hashes, ETags, and HEAD answers) still describe the original file."""
        with self._lock:
            self._instead[filename] = data

    def html_instead(self, filename: str) -> None:
        """Persistent: GETs of the file's bytes answer 200 text/html with a Cloudflare-like challenge page."""
        with self._lock:
            self._html.add(filename)

    def rate_limit(self, times: int, retry_after: int = 1) -> None:
        """The next `times` requests to the API server (not the CDN) answer 429 with `Retry-After`."""
        with self._lock:
            self._rate_limit_left = times
            self._retry_after = retry_after

    def clear_faults(self) -> None:
        with self._lock:
            self._drops.clear()
            self._instead.clear()
            self._html.clear()
            self._rate_limit_left = 0

    # -- routing -------------------------------------------------------------------------------

    def _route(self, req: _Request) -> _Response:
        if req.server == "cdn":
            return self._route_cdn(req)
        if not self._rate_limit_exempt(req):
            with self._lock:
                limited = self._rate_limit_left > 0
                if limited:
                    self._rate_limit_left -= 1
                retry_after = self._retry_after
            if limited:
                return self._rate_limited(req, retry_after)
        return self._route_api(req)

    def _rate_limit_exempt(self, req: _Request) -> bool:
        return False

    def _route_api(self, req: _Request) -> _Response:
        raise NotImplementedError

    def _route_cdn(self, req: _Request) -> _Response:
        raise NotImplementedError

    def _rate_limited(self, req: _Request, retry_after: int) -> _Response:
        return _json_response(429, {"error": "Too Many Requests"}, [("Retry-After", str(retry_after))])

    def _serve_file(
        self,
        req: _Request,
        *,
        names: Iterable[str],
        data: bytes,
        etag: str,
        content_type: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> _Response:
        """A file's bytes, with Range support and the faults injected for any of its `names`."""
        names = [n for n in names if n]
        instead: bytes | None = None
        if req.method == "GET":
            with self._lock:
                if any(n in self._html for n in names):
                    return _Response(
                        200,
                        [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-cache")],
                        CHALLENGE_HTML,
                    )
                instead = next((self._instead[n] for n in names if n in self._instead), None)
        source = data if instead is None else instead
        total = len(source)
        base = [("Accept-Ranges", "bytes"), ("ETag", etag)]
        try:
            span = _parse_range(req.range, total)
        except _Unsatisfiable:
            return _Response(
                416, [*base, ("Content-Range", f"bytes */{total}"), ("Content-Type", "application/xml")]
            )
        drop: int | None = None
        if req.method == "GET":
            with self._lock:
                key = next((n for n in names if self._drops.get(n)), None)
                if key is not None:
                    drop = self._drops[key].pop(0)
                    if not self._drops[key]:
                        del self._drops[key]
        out = [*base, ("Content-Type", content_type), *headers]
        if span is None:
            return _Response(200, out, source, drop_after=drop)
        first, last = span
        out.append(("Content-Range", f"bytes {first}-{last}/{total}"))
        return _Response(206, out, source[first : last + 1], drop_after=drop)


def _bearer(req: _Request) -> str | None:
    auth = req.authorization
    if auth is None:
        return None
    scheme, _, value = auth.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


# --------------------------------------------------------------------------------------------------
# Hugging Face Hub
# --------------------------------------------------------------------------------------------------


def git_blob_sha1(data: bytes) -> str:
    """Git's object id for a blob of these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The git-lfs pointer file committed in place of these bytes."""
    oid = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()


@dataclass(frozen=True)
class _HfFile:
    path: str
    data: bytes
    lfs: bool
    sha256: str
    blob_id: str  # git oid: of the content, or of the LFS pointer
    pointer_size: int

    @property
    def basename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @classmethod
    def make(cls, path: str, data: bytes) -> _HfFile:
        lfs = path.lower().endswith(LFS_SUFFIXES)
        pointer = lfs_pointer(data)
        return cls(
            path=path,
            data=data,
            lfs=lfs,
            sha256=hashlib.sha256(data).hexdigest(),
            blob_id=git_blob_sha1(pointer if lfs else data),
            pointer_size=len(pointer),
        )


@dataclass
class _HfCommit:
    sha: str
    files: dict[str, _HfFile]
    date: datetime


@dataclass
class _HfRepo:
    repo_id: str
    private: bool
    gated: bool
    object_id: str
    created: datetime
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _HfCommit] = field(default_factory=dict)


class FakeHub(_FakeBase):
    """The Hugging Face Hub's model API, `resolve` downloads and LFS CDN, for `HF_ENDPOINT`.

    Endpoints: `GET /api/models/{repo}[/revision/{rev}]` (ModelInfo; `blobs=true` adds sizes, blob ids
    and LFS info to `siblings`), `GET /api/models/{repo}/tree/{rev}[/{path}]` (list_repo_tree, one
    page, `recursive=true`), `HEAD|GET /{repo}/resolve/{rev}/{path}` (regular files: the bytes; LFS
    files: 302 to the CDN with `X-Linked-Etag`/`X-Linked-Size`), and the CDN's `/repos/..../{sha256}`.

    Private repos need `Authorization: Bearer <token>`; without it they look missing (401 RepoNotFound).
    Gated repos need it for downloads (401 GatedRepo without a token, 403 GatedRepo with a wrong one);
    their metadata (model info, tree) is public like on the real Hub, unless `gated_metadata_public`
    is set to False.
    """

    def __init__(self, *, token: str = "hf_test_token") -> None:
        super().__init__(token)
        self.gated_metadata_public = True
        self._repos: dict[str, _HfRepo] = {}
        self._blobs: dict[str, _HfFile] = {}  # LFS objects on the CDN, by sha256

    # -- content -------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        revision: str = "main",
        private: bool = False,
        gated: bool = False,
    ) -> str:
        """Commit `files` as the whole content of `revision` (a branch) of the model repo; return the sha.

        Adding a repo again makes a new commit for the branch; older commits stay reachable by sha.
        `private` and `gated` are repo-wide and take the latest call's values."""
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(b"\0" + name.encode() + b"\0" + files[name])
        sha = digest.hexdigest()
        now = datetime.now(UTC)
        hf_files = {name: _HfFile.make(name, data) for name, data in files.items()}
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                object_id = hashlib.sha1(b"id:" + repo_id.encode()).hexdigest()[:24]
                repo = _HfRepo(repo_id, private, gated, object_id, now)
                self._repos[repo_id] = repo
            repo.private = private
            repo.gated = gated
            repo.commits.setdefault(sha, _HfCommit(sha, hf_files, now))
            repo.branches[revision] = sha
            for f in hf_files.values():
                if f.lfs:
                    self._blobs.setdefault(f.sha256, f)
        return sha

    def commit_sha(self, repo_id: str, revision: str = "main") -> str:
        with self._lock:
            return self._repos[repo_id].branches[revision]

    # -- errors --------------------------------------------------------------------------------

    def _request_id(self) -> tuple[str, str]:
        return ("X-Request-Id", f"Root=1-{secrets.token_hex(4)}-{secrets.token_hex(12)}")

    def _error(
        self, status: int, code: str | None, message: str, headers: Iterable[tuple[str, str]] = ()
    ) -> _Response:
        extra = [("X-Error-Message", message), self._request_id(), *headers]
        if code is not None:
            extra.insert(0, ("X-Error-Code", code))
        return _json_response(status, {"error": message}, extra)

    def _repo_not_found(self) -> _Response:
        return self._error(401, "RepoNotFound", "Repository not found")

    def _rate_limited(self, req: _Request, retry_after: int) -> _Response:
        kind = "api" if req.raw_path.startswith("/api/") else "resolvers"
        message = (
            f"You have exceeded our hourly quotas for action '{kind}'. "
            "We invite you to retry later or on a paid plan."
        )
        return self._error(
            429,
            None,
            message,
            [
                ("Retry-After", str(retry_after)),
                ("RateLimit", f'"{kind}";r=0;t={retry_after}'),
                ("RateLimit-Policy", f'"fixed window";"{kind}";q=1000;w=300'),
            ],
        )

    def _check_access(self, repo: _HfRepo | None, req: _Request, *, metadata: bool) -> _Response | None:
        if repo is None:
            return self._repo_not_found()
        authorized = _bearer(req) == self.token
        if authorized:
            return None
        if repo.private:
            return self._repo_not_found()  # the Hub hides private repos
        if repo.gated and not (metadata and self.gated_metadata_public):
            if req.authorization is None:
                message = (
                    f"Access to model {repo.repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in."
                )
                return self._error(401, "GatedRepo", message)
            message = (
                f"Access to model {repo.repo_id} is restricted and you are not in the authorized list. "
                f"Visit {self.url}/{repo.repo_id} to ask for access."
            )
            return self._error(403, "GatedRepo", message)
        return None

    def _commit(self, repo: _HfRepo, revision: str) -> _HfCommit | None:
        sha = repo.branches.get(revision, revision)
        return repo.commits.get(sha)

    def _revision_not_found(self, revision: str) -> _Response:
        return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    # -- routes --------------------------------------------------------------------------------

    def _rate_limit_exempt(self, req: _Request) -> bool:
        # huggingface_hub fetches this once per process (and day) on its own: never let it eat a 429.
        return req.raw_path == "/api/agent-harnesses"

    def _route_api(self, req: _Request) -> _Response:
        path = req.raw_path
        if path == "/api/agent-harnesses":
            return _json_response(200, {"standardEnvVars": [], "harnesses": {}})
        if path.startswith("/api/models/"):
            if req.method not in ("GET", "HEAD"):
                return self._error(405, None, "Method not allowed")
            return self._api_models(req, path.removeprefix("/api/models/"))
        if "/resolve/" in path:
            if req.method not in ("GET", "HEAD"):
                return self._error(405, None, "Method not allowed")
            return self._resolve(req)
        return self._error(404, None, "Sorry, we can't find the page you are looking for.")

    def _api_models(self, req: _Request, rest: str) -> _Response:
        segs = rest.strip("/").split("/")
        k = 2 if len(segs) >= 2 and segs[1] not in ("revision", "tree") else 1
        repo_id = unquote("/".join(segs[:k]))
        tail = segs[k:]
        with self._lock:
            repo = self._repos.get(repo_id)
        denied = self._check_access(repo, req, metadata=True)
        if denied is not None or repo is None:
            return denied or self._repo_not_found()
        if not tail:
            return self._model_info(req, repo, "main")
        if tail[0] == "revision" and len(tail) == 2:
            return self._model_info(req, repo, unquote(tail[1]))
        if tail[0] == "tree" and len(tail) >= 2:
            return self._tree(req, repo, unquote(tail[1]), unquote("/".join(tail[2:])))
        return self._error(404, None, "Sorry, we can't find the page you are looking for.")

    def _model_info(self, req: _Request, repo: _HfRepo, revision: str) -> _Response:
        commit = self._commit(repo, revision)
        if commit is None:
            return self._revision_not_found(revision)
        blobs = req.query.get("blobs", "").lower() in ("true", "1")
        siblings: list[dict[str, Any]] = []
        for f in sorted(commit.files.values(), key=lambda f: f.path):
            sibling: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                sibling["size"] = len(f.data)
                sibling["blobId"] = f.blob_id
                if f.lfs:
                    sibling["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": f.pointer_size}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": repo.object_id,
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": commit.sha,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created),
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "pipeline_tag": "text-to-image",
            "library_name": "diffusers",
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(len(f.data) for f in commit.files.values()),
        }
        if req.query.get("securityStatus", "").lower() in ("true", "1"):
            info["securityRepoStatus"] = {"scansDone": True, "filesWithIssues": []}
        expand = [e for key in ("expand", "expand[]") for e in req.query_all.get(key, [])]
        if expand:
            info = {k: v for k, v in info.items() if k in ("_id", "id") or k in expand}
        return _json_response(200, info, [self._request_id()])

    def _tree(self, req: _Request, repo: _HfRepo, revision: str, folder: str) -> _Response:
        commit = self._commit(repo, revision)
        if commit is None:
            return self._revision_not_found(revision)
        recursive = req.query.get("recursive", "").lower() in ("true", "1")
        folder = folder.strip("/")
        prefix = f"{folder}/" if folder else ""
        paths = sorted(p for p in commit.files if p.startswith(prefix))
        if folder and not paths:
            return self._error(404, "EntryNotFound", f'{folder} does not exist on "{revision}"')
        entries: list[dict[str, Any]] = []
        dirs_seen: set[str] = set()
        for p in paths:
            rel = p[len(prefix) :]
            parts = rel.split("/")
            # folders between `folder` and the file (all of them if recursive, else the first one only)
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                d = prefix + "/".join(parts[:depth])
                if d not in dirs_seen:
                    dirs_seen.add(d)
                    tree_id = hashlib.sha1(f"{commit.sha}:{d}".encode()).hexdigest()
                    entries.append({"type": "directory", "oid": tree_id, "path": d})
            if len(parts) > 1 and not recursive:
                continue
            f = commit.files[p]
            entry: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": len(f.data), "path": p}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": f.pointer_size}
            entries.append(entry)
        return _json_response(200, entries, [self._request_id()])

    def _resolve(self, req: _Request) -> _Response:
        repo_part, _, rest = req.raw_path.partition("/resolve/")
        repo_id = unquote(repo_part.strip("/"))
        rev_raw, _, file_raw = rest.partition("/")
        revision, filename = unquote(rev_raw), unquote(file_raw)
        with self._lock:
            repo = self._repos.get(repo_id)
        denied = self._check_access(repo, req, metadata=False)
        if denied is not None or repo is None:
            return denied or self._repo_not_found()
        commit = self._commit(repo, revision)
        if commit is None:
            return self._revision_not_found(revision)
        commit_header = ("X-Repo-Commit", commit.sha)
        f = commit.files.get(filename)
        if f is None:
            return self._error(404, "EntryNotFound", "Entry not found", [commit_header])
        if f.lfs:
            disposition = f'attachment; filename="{f.basename}"'
            params = {
                "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
                "X-Amz-Content-Sha256": "UNSIGNED-PAYLOAD",
                "X-Amz-Credential": "AKIAFAKEHUB/20240101/us-east-1/s3/aws4_request",
                "X-Amz-Date": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
                "X-Amz-Expires": "3600",
                "X-Amz-Signature": secrets.token_hex(32),
                "X-Amz-SignedHeaders": "host",
                "response-content-disposition": disposition,
                "x-id": "GetObject",
            }
            location = f"{self.cdn_url}/repos/{f.sha256[:2]}/{f.sha256[2:4]}/{f.sha256}?{urlencode(params)}"
            return _Response(
                302,
                [
                    ("Location", location),
                    ("Content-Type", "text/plain; charset=utf-8"),
                    commit_header,
                    ("X-Linked-Etag", f'"{f.sha256}"'),
                    ("X-Linked-Size", str(len(f.data))),
                    ("ETag", f'"{f.sha256}"'),
                    ("Accept-Ranges", "bytes"),
                    self._request_id(),
                ],
                f"Found. Redirecting to {location}".encode(),
            )
        content_type, _ = mimetypes.guess_type(f.basename)
        if content_type is None:
            content_type = "application/octet-stream"
        elif content_type.startswith("text/") or content_type == "application/json":
            content_type += "; charset=utf-8"
        disposition = f"inline; filename*=UTF-8''{quote(f.basename)}; filename=\"{f.basename}\";"
        return self._serve_file(
            req,
            names=(f.path, f.basename),
            data=f.data,
            etag=f'"{f.blob_id}"',
            content_type=content_type,
            headers=[commit_header, ("Content-Disposition", disposition), self._request_id()],
        )

    def _route_cdn(self, req: _Request) -> _Response:
        match = re.fullmatch(r"/repos/[0-9a-f]{2}/[0-9a-f]{2}/([0-9a-f]{64})", req.raw_path)
        with self._lock:
            f = self._blobs.get(match.group(1)) if match else None
        if f is None or req.method not in ("GET", "HEAD"):
            body = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code></Error>'
            return _Response(404, [("Content-Type", "application/xml")], body)
        if "X-Amz-Signature" not in req.query:
            return _access_denied()
        return self._serve_file(
            req,
            names=(f.path, f.basename),
            data=f.data,
            etag=f'"{f.sha256}"',
            content_type="binary/octet-stream",
            headers=[
                ("Content-Disposition", f'attachment; filename="{f.basename}"'),
                ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ],
        )


# --------------------------------------------------------------------------------------------------
# Civitai
# --------------------------------------------------------------------------------------------------


def _format_of(name: str) -> str:
    lower = name.lower()
    if lower.endswith(".safetensors"):
        return "SafeTensor"
    if lower.endswith((".ckpt", ".pt", ".pth", ".bin")):
        return "PickleTensor"
    return "Other"


@dataclass
class _CivFile:
    file_id: int
    version_id: int
    model_id: int
    name: str
    data: bytes
    type: str
    fmt: str
    primary: bool
    cdn_key: str
    sha256: str = ""
    md5: str = ""

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.data).hexdigest().upper()
        self.md5 = hashlib.md5(self.data).hexdigest()

    @property
    def ext(self) -> str:
        return self.name.rsplit(".", 1)[-1] if "." in self.name else "bin"


@dataclass
class _CivVersion:
    version_id: int
    model_id: int
    version_name: str
    model_name: str
    base_model: str
    model_type: str
    requires_auth: bool
    created: datetime
    files: list[_CivFile]
    disposition_name: str | None = None


class FakeCivitai(_FakeBase):
    """Civitai's REST API (`/api/v1/model-versions/{id}`, `/api/v1/model-versions/by-hash/{hash}`,
    `/api/v1/models/{id}`), its download endpoint (`/api/download/models/{version id}`, 307 to the CDN)
    and the CDN, for `DF_CIVITAI_ENDPOINT`.

    Downloads of a `requires_auth` version need the token as `Authorization: Bearer` or `?token=`.
    Faults are keyed by file name, so they hit every version holding a file of that name.
    """

    DEFAULT_NAME: ClassVar[str] = "model.safetensors"

    def __init__(self, *, token: str = "civitai_test_token") -> None:
        super().__init__(token)
        self._versions: dict[int, _CivVersion] = {}
        self._cdn_files: dict[str, _CivFile] = {}
        self._next_file_id = 100_000

    def add_version(
        self,
        version_id: int,
        model_id: int,
        data: bytes,
        *,
        filename: str = DEFAULT_NAME,
        model_name: str = "Test Model",
        version_name: str = "v1.0",
        base_model: str = "SDXL 1.0",
        model_type: str = "Checkpoint",
        fmt: str = "SafeTensor",
        requires_auth: bool = False,
        extra_files: list[tuple[str, bytes, str]] | None = None,
    ) -> None:
        """Publish a model version whose primary file is `filename` with `data`.

        `extra_files` are non-primary files `(name, data, type)`, e.g. `("config.yaml", b"...", "Config")`.
        Adding an existing version id replaces it."""
        with self._lock:
            specs = [(filename, data, "Model", fmt, True)]
            specs += [(n, d, t, _format_of(n), False) for n, d, t in extra_files or []]
            files: list[_CivFile] = []
            for name, content, kind, file_fmt, primary in specs:
                self._next_file_id += 1
                f = _CivFile(
                    file_id=self._next_file_id,
                    version_id=version_id,
                    model_id=model_id,
                    name=name,
                    data=content,
                    type=kind,
                    fmt=file_fmt,
                    primary=primary,
                    cdn_key=secrets.token_hex(16),
                )
                files.append(f)
                self._cdn_files[f.cdn_key] = f
            old = self._versions.get(version_id)
            if old is not None:
                for f in old.files:
                    self._cdn_files.pop(f.cdn_key, None)
            self._versions[version_id] = _CivVersion(
                version_id=version_id,
                model_id=model_id,
                version_name=version_name,
                model_name=model_name,
                base_model=base_model,
                model_type=model_type,
                requires_auth=requires_auth,
                created=datetime.now(UTC),
                files=files,
            )

    def disposition_filename(self, version_id: int, name: str) -> None:
        """Persistent: the CDN's Content-Disposition for this version's files announces `name` instead."""
        with self._lock:
            self._versions[version_id].disposition_name = name

    def download_url(self, version_id: int, file_type: str = "Model") -> str:
        """The `downloadUrl` the API publishes for the version's file of that type."""
        with self._lock:
            version = self._versions[version_id]
            f = next(f for f in version.files if f.type == file_type)
        return self._file_download_url(f)

    # -- JSON ----------------------------------------------------------------------------------

    def _file_download_url(self, f: _CivFile) -> str:
        url = f"{self.url}/api/download/models/{f.version_id}"
        if f.primary:
            return url
        return url + "?" + urlencode({"type": f.type, "format": f.fmt}, quote_via=quote)

    def _file_json(self, f: _CivFile, version: _CivVersion) -> dict[str, Any]:
        sha = f.sha256
        metadata: dict[str, Any]
        if f.primary:
            metadata = {"format": f.fmt, "size": "pruned", "fp": "fp16"}
        else:
            metadata = {"format": f.fmt, "size": None, "fp": None}
        return {
            "id": f.file_id,
            "sizeKB": len(f.data) / 1024,
            "name": f.name,
            "type": f.type,
            "pickleScanResult": "Success",
            "pickleScanMessage": "No Pickle imports",
            "virusScanResult": "Success",
            "virusScanMessage": None,
            "scannedAt": _iso(version.created),
            "metadata": metadata,
            "hashes": {
                "AutoV1": hashlib.sha256(b"autov1" + f.data).hexdigest()[:8].upper(),
                "AutoV2": sha[:10],
                "SHA256": sha,
                "CRC32": f"{zlib.crc32(f.data):08X}",
                "BLAKE3": hashlib.blake2b(f.data, digest_size=32).hexdigest().upper(),
                "AutoV3": hashlib.sha256(b"autov3" + f.data).hexdigest()[:12].upper(),
            },
            "downloadUrl": self._file_download_url(f),
            "primary": f.primary,
        }

    def _version_json(self, version: _CivVersion, *, with_model: bool = True) -> dict[str, Any]:
        created = _iso(version.created)
        payload: dict[str, Any] = {
            "id": version.version_id,
            "modelId": version.model_id,
            "name": version.version_name,
            "createdAt": created,
            "updatedAt": created,
            "status": "Published",
            "publishedAt": created,
            "trainedWords": [],
            "trainingStatus": None,
            "trainingDetails": None,
            "baseModel": version.base_model,
            "baseModelType": "Standard",
            "earlyAccessEndsAt": None,
            "earlyAccessConfig": None,
            "description": f"<p>{version.version_name} of {version.model_name}</p>",
            "uploadType": "Created",
            "usageControl": "Download",
            "air": f"urn:air:sdxl:checkpoint:civitai:{version.model_id}@{version.version_id}",
            "stats": {"downloadCount": 0, "ratingCount": 0, "rating": 0, "thumbsUpCount": 0},
        }
        if with_model:
            payload["model"] = {
                "name": version.model_name,
                "type": version.model_type,
                "nsfw": False,
                "poi": False,
            }
        payload["files"] = [self._file_json(f, version) for f in version.files]
        payload["images"] = []
        payload["downloadUrl"] = self._file_download_url(version.files[0])
        return payload

    # -- routes --------------------------------------------------------------------------------

    def _route_api(self, req: _Request) -> _Response:
        if req.method not in ("GET", "HEAD"):
            return _json_response(405, {"error": "Method not allowed"})
        path = req.raw_path.rstrip("/")
        if m := re.fullmatch(r"/api/v1/model-versions/by-hash/([^/]+)", path):
            return self._by_hash(unquote(m.group(1)))
        if m := re.fullmatch(r"/api/v1/model-versions/([^/]+)", path):
            version = self._version(m.group(1))
            if version is None:
                return _json_response(404, {"error": f"No model with id {m.group(1)}"})
            return _json_response(200, self._version_json(version))
        if m := re.fullmatch(r"/api/v1/models/([^/]+)", path):
            return self._model(m.group(1))
        if m := re.fullmatch(r"/api/download/models/([^/]+)", path):
            return self._download(req, m.group(1))
        return _json_response(404, {"error": "Not Found"})

    def _version(self, raw_id: str) -> _CivVersion | None:
        if not raw_id.isdigit():
            return None
        with self._lock:
            return self._versions.get(int(raw_id))

    def _by_hash(self, wanted: str) -> _Response:
        wanted = wanted.upper()
        with self._lock:
            versions = list(self._versions.values())
        for version in versions:
            for f in version.files:
                hashes = self._file_json(f, version)["hashes"]
                if wanted in hashes.values():
                    return _json_response(200, self._version_json(version))
        return _json_response(404, {"error": "Model not found"})

    def _model(self, raw_id: str) -> _Response:
        with self._lock:
            versions = [v for v in self._versions.values() if raw_id.isdigit() and v.model_id == int(raw_id)]
        if not versions:
            return _json_response(404, {"error": f"No model with id {raw_id}"})
        versions.sort(key=lambda v: v.version_id, reverse=True)
        first = versions[0]
        payload = {
            "id": first.model_id,
            "name": first.model_name,
            "description": f"<p>{first.model_name}</p>",
            "type": first.model_type,
            "poi": False,
            "nsfw": False,
            "allowNoCredit": True,
            "allowCommercialUse": ["Image"],
            "allowDerivatives": True,
            "allowDifferentLicense": True,
            "stats": {"downloadCount": 0, "favoriteCount": 0, "commentCount": 0, "rating": 0},
            "creator": {"username": "tester", "image": None},
            "tags": [],
            "modelVersions": [self._version_json(v, with_model=False) for v in versions],
        }
        return _json_response(200, payload)

    def _authorized(self, req: _Request) -> bool:
        return self.token in (_bearer(req), req.query.get("token"))

    def _download(self, req: _Request, raw_id: str) -> _Response:
        version = self._version(raw_id)
        if version is None:
            return _json_response(404, {"error": "Model file not found"})
        if version.requires_auth and not self._authorized(req):
            message = "The creator of this asset requires you to be logged in to download it"
            return _json_response(401, {"error": "Unauthorized", "message": message})
        wanted_type = req.query.get("type", "Model").lower()
        wanted_fmt = req.query.get("format", "").lower()
        candidates = [f for f in version.files if f.type.lower() == wanted_type]
        if not candidates:
            return _json_response(404, {"error": "Model file not found"})
        f = next((c for c in candidates if c.fmt.lower() == wanted_fmt), candidates[0])
        with self._lock:
            shown = version.disposition_name or f.name
        disposition = f'attachment; filename="{quote(shown)}"'
        params = {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Content-Sha256": "UNSIGNED-PAYLOAD",
            "X-Amz-Credential": "FAKECIVITAI/20240101/auto/s3/aws4_request",
            "X-Amz-Date": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
            "X-Amz-Expires": "86400",
            "X-Amz-Signature": secrets.token_hex(32),
            "X-Amz-SignedHeaders": "host",
            "response-content-disposition": disposition,
            "x-id": "GetObject",
        }
        location = (
            f"{self.cdn_url}/model/{f.model_id}/{f.cdn_key}.{f.ext}?{urlencode(params, quote_via=quote)}"
        )
        return _Response(307, [("Location", location), ("Content-Type", "text/plain; charset=utf-8")])

    def _route_cdn(self, req: _Request) -> _Response:
        match = re.fullmatch(r"/model/(\d+)/([0-9a-f]+)\.[^/]+", req.raw_path)
        with self._lock:
            f = self._cdn_files.get(match.group(2)) if match else None
            version = self._versions.get(f.version_id) if f is not None else None
        if f is None or version is None or req.method not in ("GET", "HEAD"):
            body = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code></Error>'
            return _Response(404, [("Content-Type", "application/xml")], body)
        if "X-Amz-Signature" not in req.query:
            return _access_denied()
        with self._lock:
            shown = version.disposition_name or f.name
        return self._serve_file(
            req,
            names=(f.name,),
            data=f.data,
            etag=f'"{f.md5}"',
            content_type="application/octet-stream",
            headers=[
                ("Content-Disposition", f'attachment; filename="{shown}"'),
                ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ],
        )
