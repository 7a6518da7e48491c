"""The "infotext" layout that A1111's PNG Info, Civitai and peers read.

Written by hand: no maintained library produces it, and its quoting rules are short.
Layout: prompt line(s), optional `Negative prompt: …` line(s), then one parameter line
starting `Steps: ` with `Key: value` pairs joined by `, `. JSON objects and arrays (`Hashes`,
`Civitai resources`) are written bare, because Civitai's parser matches `Hashes: {…}` and
`Civitai resources: [{…}]` and would not decode a JSON-quoted string there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

ParamValue = str | int | float | dict[str, object] | list[object] | None

_NEEDS_QUOTING = re.compile(r"[,:\n]")
# Key: value pairs on the parameter line; a value is a JSON string, a flat JSON object, a JSON
# array of flat objects, or runs to the next comma.
_PARAM = re.compile(
    r'\s*([\w ][\w \-/]*):\s*("(?:\\.|[^\\"])+"|\{[^{}]*\}|\[(?:[^\[\]{}]|\{[^{}]*\})*\]|[^,]*)(?:,|$)'
)


def format_value(value: str | int | float | dict[str, object] | list[object]) -> str:
    """A value as A1111 writes it: JSON-quoted when it holds `,`, `:` or a newline; objects bare."""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if _NEEDS_QUOTING.search(text) else text


def build_infotext(prompt: str, negative_prompt: str | None, params: Mapping[str, ParamValue]) -> str:
    """Render the infotext; keys with no value are left out, order is kept."""
    parts = [f"{key}: {format_value(value)}" for key, value in params.items() if value or value == 0]
    lines = [prompt.strip()]
    if negative_prompt and negative_prompt.strip():
        lines.append(f"Negative prompt: {negative_prompt.strip()}")
    lines.append(", ".join(parts))
    return "\n".join(lines)


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """Split infotext into (prompt, negative prompt, parameters) the way A1111 reads it."""
    *head, last = text.strip().split("\n")
    params: dict[str, str] = {}
    if last.startswith("Steps: "):
        for key, raw in _PARAM.findall(last):
            value = raw.strip()
            if value.startswith('"') and value.endswith('"'):
                value = json.loads(value)
            params[key.strip()] = value
    else:
        head.append(last)
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in head:
        if line.startswith("Negative prompt:") or negative_lines:
            negative_lines.append(
                line.removeprefix("Negative prompt:").strip() if not negative_lines else line
            )
        else:
            prompt_lines.append(line)
    return "\n".join(prompt_lines).strip(), "\n".join(negative_lines).strip(), params
