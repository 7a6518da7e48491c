"""Model references as users type them, and the clear errors for the ones that cannot work."""

from __future__ import annotations

import pytest

from dreamforge.registry.refs import CivitaiRef, HfRef, RefError, parse_ref, source_of


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf:acme/sdxl", HfRef("acme/sdxl")),
        ("hf:acme/sdxl@v1.0", HfRef("acme/sdxl", "v1.0")),
        ("hf:acme/sdxl@refs/pr/3", HfRef("acme/sdxl", "refs/pr/3")),
        ("hf:acme/sdxl#epicrealismXL.safetensors", HfRef("acme/sdxl", None, "epicrealismXL.safetensors")),
        (
            "hf:acme/sdxl@0123abcd#sub/dir/x.safetensors",
            HfRef("acme/sdxl", "0123abcd", "sub/dir/x.safetensors"),
        ),
        ("civitai:277058", CivitaiRef(277058)),
        ("civitai:25694@277058", CivitaiRef(277058, model_id=25694)),
    ],
)
def test_valid_refs_parse_and_print_back(text: str, expected: HfRef | CivitaiRef) -> None:
    assert parse_ref(text) == expected
    assert str(parse_ref(text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("acme/sdxl", "not a model reference"),
        ("s3:bucket/x", "unknown source 's3'"),
        ("hf:sdxl", "not a Hugging Face repo id"),
        ("hf:acme/../etc", "not a Hugging Face repo id"),
        ("hf:acme/sdxl#../../x.safetensors", "not a file path inside the repo"),
        ("hf:acme/sdxl#/etc/passwd", "not a file path inside the repo"),
        ("civitai:epicrealism-xl", "numeric model version id"),
        ("civitai:1@latest", "both numbers"),
    ],
)
def test_bad_refs_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(RefError, match=message):
        parse_ref(text)


def test_the_registry_records_a_source_without_its_revision() -> None:
    assert source_of(parse_ref("hf:acme/sdxl@v2#x.safetensors")) == "hf:acme/sdxl#x.safetensors"
    assert source_of(parse_ref("hf:acme/sdxl@main")) == "hf:acme/sdxl"
    assert source_of(parse_ref("civitai:25694@277058")) == "civitai:277058"
