"""`civitai:` references: one model version, read from Civitai's public REST API.

No maintained Python client covers Civitai's download API, so the two calls are made here with
httpx: `GET /api/v1/model-versions/{id}` for names, files and hashes, and the download endpoint
`/api/download/models/{id}`, which redirects to a presigned storage URL (fetched by `Transfer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from dreamforge.registry.formats import UnsafeFile, pickle_refusal, require_safetensors, safe_filename
from dreamforge.registry.refs import CivitaiRef
from dreamforge.registry.transfer import (
    AuthRequired,
    DownloadError,
    RemoteFile,
    RemoteNotFound,
    api_retrying,
    origin,
)

TOKEN_HINT = "set CIVITAI_TOKEN to an API key from civitai.com/user/account"
# Civitai model types Dream Forge installs (`model.type` of a version); LoRAs, VAEs, ... are refused.
CHECKPOINT_TYPE = "Checkpoint"
UPSCALER_TYPE = "Upscaler"
SUPPORTED_TYPES = (CHECKPOINT_TYPE, UPSCALER_TYPE)


@dataclass(frozen=True)
class CivitaiVersion:
    """What Civitai publishes about one model version, and the model file to fetch."""

    version_id: int
    model_id: int
    model_name: str
    model_type: str  # one of SUPPORTED_TYPES
    version_name: str
    base_model: str
    file: RemoteFile
    file_id: int | None
    autov2: str | None


class _TransientStatus(Exception):
    """Civitai answered 429 or 5xx: worth another try."""


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError | _TransientStatus)


class CivitaiSource:
    """Reads version metadata from Civitai and plans the primary file's download."""

    def __init__(
        self,
        client: httpx.Client,
        *,
        endpoint: str,
        token: str | None,
        attempts: int = 5,
        backoff_initial: float = 1.0,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._client = client
        self._token = token
        self._attempts = attempts
        self._backoff_initial = backoff_initial

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        def once() -> httpx.Response:
            # Same host as the endpoint, so the token may go along; no redirects are followed here.
            response = self._client.get(url, headers=self._auth(), follow_redirects=False)
            if response.status_code == 429 or response.status_code >= 500:
                raise _TransientStatus(f"Civitai answered {response.status_code}")
            return response

        try:
            response = api_retrying(self._attempts, self._backoff_initial, _transient)(once)
        except _TransientStatus as exc:
            raise DownloadError(f"{what}: {exc}, even after {self._attempts} tries") from None
        except httpx.TransportError as exc:
            raise DownloadError(f"{what}: cannot reach {self.endpoint}: {exc}") from None
        if response.status_code == 404:
            raise RemoteNotFound(f"{what}: Civitai has no model version with this id")
        if response.status_code in (401, 403):
            raise AuthRequired(f"{what}: Civitai answered {response.status_code}; {TOKEN_HINT}")
        if response.status_code != 200:
            raise DownloadError(f"{what}: Civitai answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise DownloadError(f"{what}: Civitai answered with something other than JSON") from None
        if not isinstance(body, dict):
            raise DownloadError(f"{what}: unexpected answer from Civitai")
        return body

    def version(self, ref: CivitaiRef) -> CivitaiVersion:
        """The version's metadata and its model file; refuses pickle-only versions and unsupported types."""
        what = str(ref)
        data = self._get_json(f"{self.endpoint}/api/v1/model-versions/{ref.version_id}", what)
        model_id = int(data.get("modelId") or 0)
        if ref.model_id is not None and model_id != ref.model_id:
            raise RemoteNotFound(
                f"{what}: version {ref.version_id} belongs to model {model_id}, not {ref.model_id}"
            )
        model = data.get("model") or {}
        model_type = str(model.get("type", CHECKPOINT_TYPE))
        if model_type not in SUPPORTED_TYPES:
            raise DownloadError(
                f"{what} is a {model_type} model; Dream Forge installs only these Civitai model types: "
                + ", ".join(SUPPORTED_TYPES)
            )
        chosen = self._pick_file(what, list(data.get("files") or []))
        name = safe_filename(str(chosen.get("name") or f"civitai-{ref.version_id}.safetensors"))
        require_safetensors(name)
        hashes = chosen.get("hashes") or {}
        sha256 = str(hashes["SHA256"]).lower() if hashes.get("SHA256") else None
        return CivitaiVersion(
            version_id=ref.version_id,
            model_id=model_id,
            model_name=str(model.get("name") or f"civitai-{model_id}"),
            model_type=model_type,
            version_name=str(data.get("name") or ref.version_id),
            base_model=str(data.get("baseModel") or ""),
            file=RemoteFile(
                path=name,
                url=self._download_url(ref.version_id, chosen),
                size=_size_bytes(chosen.get("sizeKB")),
                sha256=sha256,
                auth_headers=self._auth(),
                auth_host=origin(self.endpoint),
                auth_hint=TOKEN_HINT,
            ),
            file_id=chosen.get("id"),
            autov2=str(hashes["AutoV2"]).lower() if hashes.get("AutoV2") else None,
        )

    @staticmethod
    def _pick_file(what: str, files: list[dict[str, Any]]) -> dict[str, Any]:
        models = [f for f in files if f.get("type", "Model") == "Model"]
        if not models:
            raise DownloadError(f"{what} has no model file")
        safe = [f for f in models if _is_safetensors(f)]
        if not safe:
            raise UnsafeFile(pickle_refusal(str(models[0].get("name"))))
        # The primary file when it is a safetensors one, else the first safetensors alternative.
        return next((f for f in safe if f.get("primary")), safe[0])

    def _download_url(self, version_id: int, file: dict[str, Any]) -> str:
        # Keep the file's own query (type/format/size/fp pick the variant) on our endpoint's host.
        published = urlsplit(str(file.get("downloadUrl") or ""))
        base = urlsplit(self.endpoint)
        path = published.path or f"/api/download/models/{version_id}"
        return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + path, published.query, ""))


def _is_safetensors(file: dict[str, Any]) -> bool:
    fmt = str((file.get("metadata") or {}).get("format") or "")
    return fmt == "SafeTensor" or (not fmt and str(file.get("name", "")).endswith(".safetensors"))


def _size_bytes(size_kb: Any) -> int | None:
    """Civitai publishes sizes in KB as floats; trust them only when they are whole bytes."""
    if not isinstance(size_kb, int | float):
        return None
    size = size_kb * 1024
    return int(size) if abs(size - round(size)) < 1e-6 else None
