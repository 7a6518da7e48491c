"""Model references users type: `hf:<repo>[@rev][#file]` and `civitai:<version id>`."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Hugging Face repo ids: `owner/name`, letters, digits, `-`, `_`, `.` (no `--` or `..`).
_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}/[A-Za-z0-9][\w.\-]{0,95}$")
_HF_REVISION = re.compile(r"^[\w.\-/]{1,200}$")


class RefError(ValueError):
    """A model reference that cannot be parsed; the message says what a valid one looks like."""


@dataclass(frozen=True)
class HfRef:
    """A Hugging Face repo (a diffusers folder) or one file in it (a single-file checkpoint)."""

    repo_id: str
    revision: str | None = None
    filename: str | None = None

    def __str__(self) -> str:
        text = f"hf:{self.repo_id}"
        if self.revision:
            text += f"@{self.revision}"
        if self.filename:
            text += f"#{self.filename}"
        return text


@dataclass(frozen=True)
class CivitaiRef:
    """One version of a Civitai model; `model_id` is checked against the version when given."""

    version_id: int
    model_id: int | None = None

    def __str__(self) -> str:
        if self.model_id is not None:
            return f"civitai:{self.model_id}@{self.version_id}"
        return f"civitai:{self.version_id}"


ModelRef = HfRef | CivitaiRef


def source_of(ref: ModelRef) -> str:
    """The reference without its revision: how the registry records where a model came from."""
    if isinstance(ref, CivitaiRef):
        return f"civitai:{ref.version_id}"
    return str(HfRef(ref.repo_id, None, ref.filename))


REF_HELP = "hf:<owner>/<repo>[@revision][#file.safetensors] or civitai:<version id>"


def parse_ref(text: str) -> ModelRef:
    """Parse a reference, or raise `RefError` saying what is wrong with it."""
    scheme, sep, rest = text.strip().partition(":")
    if not sep or not rest:
        raise RefError(f"{text!r} is not a model reference; use {REF_HELP}")
    if scheme == "hf":
        return _parse_hf(text, rest)
    if scheme == "civitai":
        return _parse_civitai(text, rest)
    raise RefError(f"unknown source {scheme!r} in {text!r}; use {REF_HELP}")


def _parse_hf(text: str, rest: str) -> HfRef:
    rest, _, filename = rest.partition("#")
    repo_id, _, revision = rest.partition("@")
    if not _HF_REPO.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise RefError(f"{text!r}: {repo_id!r} is not a Hugging Face repo id (owner/name)")
    if revision and (not _HF_REVISION.match(revision) or ".." in revision):
        raise RefError(f"{text!r}: {revision!r} is not a valid revision (branch, tag or commit)")
    if filename and (filename.startswith("/") or ".." in filename.split("/") or "\\" in filename):
        raise RefError(f"{text!r}: {filename!r} is not a file path inside the repo")
    return HfRef(repo_id=repo_id, revision=revision or None, filename=filename or None)


def _parse_civitai(text: str, rest: str) -> CivitaiRef:
    first, at, second = rest.partition("@")
    if at:
        if not (first.isdigit() and second.isdigit()):
            raise RefError(f"{text!r}: use civitai:<model id>@<version id>, both numbers")
        return CivitaiRef(version_id=int(second), model_id=int(first))
    if not first.isdigit():
        # Slugs need a search API call and are ambiguous across versions; the seed defers them.
        raise RefError(
            f"{text!r}: Civitai references take the numeric model version id (the `modelVersionId` in "
            "a civitai.com/models/<id>?modelVersionId=<version id> link); slugs are not supported yet"
        )
    return CivitaiRef(version_id=int(first))
