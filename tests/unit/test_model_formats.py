"""What a downloaded file may be named and contain."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from dreamforge.registry.formats import (
    UnsafeFile,
    check_safetensors_header,
    disposition_filename,
    looks_like_error_page,
    require_safetensors,
    safe_filename,
    safe_relpath,
)


@pytest.mark.parametrize(
    ("announced", "kept"),
    [
        ("epicrealismXL_v10.safetensors", "epicrealismXL_v10.safetensors"),
        ("../../evil.safetensors", "evil.safetensors"),
        ("/etc/cron.d/evil.safetensors", "evil.safetensors"),
        ("C:\\Windows\\evil.safetensors", "evil.safetensors"),
        (".hidden.safetensors", "hidden.safetensors"),
        ("we<ird>|name?.safetensors", "we_ird__name_.safetensors"),
    ],
)
def test_server_file_names_are_reduced_to_one_safe_component(announced: str, kept: str) -> None:
    assert safe_filename(announced) == kept


@pytest.mark.parametrize("announced", ["..", "/", "../", " . "])
def test_names_with_nothing_left_are_refused(announced: str) -> None:
    with pytest.raises(UnsafeFile):
        safe_filename(announced)


def test_repo_paths_that_could_leave_the_folder_are_refused() -> None:
    assert safe_relpath("unet/config.json") == "unet/config.json"
    for bad in ("../x", "unet/../../x", "/abs", "a//b", "a\\b"):
        with pytest.raises(UnsafeFile):
            safe_relpath(bad)


def test_content_disposition_forms() -> None:
    assert disposition_filename('attachment; filename="a b.safetensors"') == "a b.safetensors"
    assert disposition_filename("attachment; filename*=UTF-8''%C3%A9t%C3%A9.safetensors") == "été.safetensors"
    assert disposition_filename("attachment") is None
    assert disposition_filename(None) is None


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "model.pth", "pytorch_model.bin", "x.pkl"])
def test_pickle_formats_are_refused_with_the_reason(name: str) -> None:
    with pytest.raises(UnsafeFile, match="can run arbitrary code"):
        require_safetensors(name)


def test_other_formats_are_refused() -> None:
    with pytest.raises(UnsafeFile, match=r"only \.safetensors"):
        require_safetensors("model.gguf")
    require_safetensors("Model.SAFETENSORS")


def test_error_pages_are_recognised_by_type_or_by_their_first_bytes() -> None:
    binary = "application/octet-stream"
    assert looks_like_error_page("m.safetensors", "text/html; charset=utf-8", b"anything")
    assert looks_like_error_page("m.safetensors", binary, b"\n  <!DOCTYPE html><html>")
    assert looks_like_error_page("m.safetensors", "application/json", b'{"error": "nope"}')
    assert looks_like_error_page("m.safetensors", binary, b'{"error": "Unauthorized"}')
    assert not looks_like_error_page("m.safetensors", binary, struct.pack("<Q", 2) + b"{}")
    assert not looks_like_error_page("unet/config.json", "application/json", b'{"a": 1}')


def test_safetensors_header_check(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    header = json.dumps({"__metadata__": {}}).encode()
    good.write_bytes(struct.pack("<Q", len(header)) + header)
    check_safetensors_header(good)

    for name, data in {
        "short.safetensors": b"abc",
        "html.safetensors": b"<!DOCTYPE html><html>login</html>",
        "notjson.safetensors": struct.pack("<Q", 3) + b"abc",
    }.items():
        bad = tmp_path / name
        bad.write_bytes(data)
        with pytest.raises(UnsafeFile, match="safetensors"):
            check_safetensors_header(bad)
