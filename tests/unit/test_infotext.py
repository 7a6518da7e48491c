"""The A1111 infotext we write is what A1111 and Civitai parse."""

from __future__ import annotations

import json

from dreamforge.recipe.infotext import ParamValue, build_infotext, format_value, parse_infotext


def test_parameter_line_is_last_and_starts_with_steps() -> None:
    text = build_infotext(
        "a cat\non a mat",
        "blurry",
        {
            "Steps": 30,
            "Sampler": "DPM++ 2M",
            "Schedule type": "Karras",
            "CFG scale": 7.0,
            "Seed": 5,
            "Size": "1024x1024",
            "Model hash": "a5f58eb1c3",
            "Model": "epicrealismXL",
        },
    )
    lines = text.split("\n")
    assert lines[0] == "a cat"
    assert lines[2] == "Negative prompt: blurry"
    assert lines[-1].startswith("Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5")
    assert lines[-1].endswith("Model hash: a5f58eb1c3, Model: epicrealismXL")


def test_empty_negative_prompt_line_and_empty_values_are_left_out() -> None:
    text = build_infotext("p", "  ", {"Steps": 1, "Schedule type": None, "Seed": 3, "Size": "64x64"})
    assert "Negative prompt" not in text
    assert "Schedule type" not in text


def test_values_with_separators_are_json_quoted() -> None:
    assert format_value("a, b") == '"a, b"'
    assert format_value("key: v") == '"key: v"'
    assert format_value("plain") == "plain"
    assert format_value(7.5) == "7.5"


def test_round_trip_through_the_parser() -> None:
    params: dict[str, ParamValue] = {
        "Steps": 8,
        "Sampler": "UniPC",
        "CFG scale": 4.5,
        "Seed": 123,
        "Size": "64x64",
        "Model": "name, with: separators",
        "Hashes": {"model": "0123456789", "vae": "abcdef0123"},
        "Civitai resources": [{"type": "checkpoint", "modelVersionId": 7}],
        "Version": "dreamforge 0.1.0",
    }
    prompt, negative, parsed = parse_infotext(build_infotext("héllo wörld", "ugly, bad", params))
    assert prompt == "héllo wörld"
    assert negative == "ugly, bad"
    assert parsed["Seed"] == "123"
    assert parsed["Model"] == "name, with: separators"
    assert json.loads(parsed["Hashes"]) == {"model": "0123456789", "vae": "abcdef0123"}
    assert json.loads(parsed["Civitai resources"]) == [{"type": "checkpoint", "modelVersionId": 7}]
    assert parsed["Version"] == "dreamforge 0.1.0"
    assert len(parsed) == len(params)
