"""`hf:` references: what to fetch from the Hugging Face Hub, resolved and pinned to a commit.

huggingface_hub does everything Hub-specific here: the endpoint (`HF_ENDPOINT`), the token
(`HF_TOKEN` or a stored login), the repo API (commit, file list, sizes, LFS SHA-256s), the
`resolve` URL scheme and the mapping of Hub error codes. The bytes go through `Transfer`,
which resumes across runs (see its module docstring).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

import httpx
import httpx2
from huggingface_hub import HfApi, constants, get_token, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoSibling

from dreamforge.registry.formats import (
    PICKLE_SUFFIXES,
    UnsafeFile,
    pickle_refusal,
    require_safetensors,
    safe_relpath,
)
from dreamforge.registry.refs import HfRef
from dreamforge.registry.transfer import (
    AuthRequired,
    DownloadError,
    RemoteFile,
    RemoteNotFound,
    api_retrying,
    origin,
)

# The components an SDXL pipeline loads; anything else in a repo (ONNX exports, Flax weights,
# alternative VAEs, the original single-file checkpoint at the root) is left on the Hub.
SDXL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
_CONFIG_SUFFIXES = (".json", ".txt", ".model")
_FP16_WEIGHTS = re.compile(r"\.fp16(?:-\d{5}-of-\d{5})?\.safetensors$|\.safetensors\.index\.fp16\.json$")
_PLAIN_WEIGHTS = re.compile(r"^[^.]+(?:-\d{5}-of-\d{5})?\.safetensors$|^[^.]+\.safetensors\.index\.json$")
TOKEN_HINT = "set HF_TOKEN to a token of an account that may read this repo (and has accepted its license)"

T = TypeVar("T")


@dataclass(frozen=True)
class HfSnapshot:
    """A repo at one commit: the files it holds and what the Hub says about each."""

    repo_id: str
    commit: str
    siblings: Sequence[RepoSibling]


def hub_endpoint() -> str:
    """The Hub's base URL: `HF_ENDPOINT` if set now, else huggingface_hub's default."""
    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


# huggingface_hub 2.x talks HTTP through httpx2 (its fork of httpx); our Transfer uses httpx.
_TRANSPORT_ERRORS = (httpx.TransportError, httpx2.TransportError)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSPORT_ERRORS):
        return True
    status = exc.response.status_code if isinstance(exc, HfHubHTTPError) and exc.response is not None else 0
    return status == 429 or status >= 500


class HuggingFaceSource:
    """Resolves `hf:` references into pinned file lists for `Transfer`."""

    def __init__(
        self, *, endpoint: str | None = None, attempts: int = 5, backoff_initial: float = 1.0
    ) -> None:
        self.endpoint = (endpoint or hub_endpoint()).rstrip("/")
        self._token = get_token()
        self._api = HfApi(endpoint=self.endpoint, token=self._token or False)
        self._attempts = attempts
        self._backoff_initial = backoff_initial

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return api_retrying(self._attempts, self._backoff_initial, _transient)(fn)
        except GatedRepoError:
            raise AuthRequired(f"{what} is gated; {TOKEN_HINT}") from None
        except RevisionNotFoundError:
            raise RemoteNotFound(f"{what}: no such revision on {self.endpoint}") from None
        except RemoteEntryNotFoundError:
            raise RemoteNotFound(f"{what}: no such file in the repo") from None
        except RepositoryNotFoundError:
            # The Hub answers the same for a missing repo and a private one we may not read.
            hint = "check the name" if self._token else f"check the name, or {TOKEN_HINT}"
            raise RemoteNotFound(f"{what} was not found on {self.endpoint} ({hint})") from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise DownloadError(f"{what}: the Hub answered {status}: {exc}") from None
        except OfflineModeIsEnabled:
            raise DownloadError(f"{what}: HF_HUB_OFFLINE is set; unset it to download from the Hub") from None
        except _TRANSPORT_ERRORS as exc:
            raise DownloadError(f"{what}: cannot reach {self.endpoint}: {exc}") from None

    def snapshot(self, repo_id: str, revision: str | None) -> HfSnapshot:
        """The repo at `revision` (default `main`), pinned to the commit it resolves to now."""
        what = f"hf:{repo_id}" + (f"@{revision}" if revision else "")
        info = self._call(
            what, lambda: self._api.model_info(repo_id, revision=revision or "main", files_metadata=True)
        )
        if not info.sha:
            raise DownloadError(f"{what}: the Hub did not say which commit it resolved to")
        return HfSnapshot(repo_id=repo_id, commit=info.sha, siblings=list(info.siblings or []))

    def remote_file(self, snap: HfSnapshot, filename: str, *, dest: str | None = None) -> RemoteFile:
        """How to fetch one file of the snapshot, with the size and hash the Hub publishes."""
        sibling = next((s for s in snap.siblings if s.rfilename == filename), None)
        if sibling is None:
            raise RemoteNotFound(f"hf:{snap.repo_id}@{snap.commit[:12]} has no file {filename!r}")
        url = hf_hub_url(snap.repo_id, filename, revision=snap.commit, endpoint=self.endpoint)
        lfs = sibling.lfs
        auth = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        return RemoteFile(
            path=safe_relpath(dest or filename),
            url=url,
            size=lfs.size if lfs is not None else sibling.size,
            sha256=lfs.sha256 if lfs is not None else None,
            git_sha1=None if lfs is not None else sibling.blob_id,
            auth_headers=auth,
            auth_host=origin(self.endpoint),
            auth_hint=TOKEN_HINT,
        )

    def single_file(self, ref: HfRef, snap: HfSnapshot) -> RemoteFile:
        """The one file (checkpoint or upscaler) of a `hf:repo#file` reference; pickles are refused."""
        assert ref.filename is not None
        require_safetensors(ref.filename)
        return self.remote_file(snap, ref.filename, dest=PurePosixPath(ref.filename).name)

    def pipeline_files(self, snap: HfSnapshot, model_index: Path) -> list[RemoteFile]:
        """The files an SDXL pipeline loads from a diffusers-layout repo; fp16 weights when offered."""
        index = json.loads(model_index.read_text())
        components = [c for c in SDXL_COMPONENTS if isinstance(index.get(c), list) and index[c][0]]
        if "unet" not in components:
            raise DownloadError(
                f"hf:{snap.repo_id} is not an SDXL diffusers pipeline (no unet in model_index)"
            )
        names = [s.rfilename for s in snap.siblings]
        chosen: list[str] = []
        for comp in components:
            inside = [n for n in names if n.startswith(f"{comp}/") and n.count("/") == 1]
            configs = [n for n in inside if n.endswith(_CONFIG_SUFFIXES) and ".index." not in n]
            base = [n.split("/", 1)[1] for n in inside]
            fp16 = [f"{comp}/{b}" for b in base if _FP16_WEIGHTS.search(b)]
            plain = [f"{comp}/{b}" for b in base if _PLAIN_WEIGHTS.match(b)]
            weights = fp16 or plain
            if not weights and comp not in ("tokenizer", "tokenizer_2", "scheduler"):
                pickles = [n for n in inside if PurePosixPath(n).suffix in PICKLE_SUFFIXES]
                if pickles:
                    raise UnsafeFile(pickle_refusal(pickles[0]))
                raise DownloadError(f"hf:{snap.repo_id}: {comp}/ has no .safetensors weights")
            chosen += configs + weights
        return [self.remote_file(snap, n) for n in sorted(set(chosen))]

    def config_files(self, snap: HfSnapshot) -> list[RemoteFile]:
        """The small config and tokenizer files a single-file SDXL checkpoint loads against."""
        wanted = [
            s.rfilename
            for s in snap.siblings
            if s.rfilename == "model_index.json"
            or (
                s.rfilename.count("/") == 1
                and s.rfilename.split("/")[0] in SDXL_COMPONENTS
                and s.rfilename.endswith(_CONFIG_SUFFIXES)
                and ".index." not in s.rfilename
            )
        ]
        if "model_index.json" not in wanted:
            raise DownloadError(
                f"hf:{snap.repo_id} has no model_index.json to configure a single-file checkpoint"
            )
        return [self.remote_file(snap, n, dest=f"config/{n}") for n in sorted(wanted)]
