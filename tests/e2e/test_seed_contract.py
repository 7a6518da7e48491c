"""Real answers of every route the seed contract names, held to the seed's own OpenAPI schemas.

The seed (`shared/seeds/masters-10-openapi-makefile-cli.md`, beside this repository) sketches the v1
API as OpenAPI 3.0 YAML. Each body a running server sends here is validated against the seed's
component schema for it, and against our own committed OpenAPI document with every object closed
(`additionalProperties: false`), so that each field we send beyond the seed is one we document.

The rule under test: a field the seed types as a string, integer, number, boolean, array or object is
never `null`; an unset optional field is left out of the body.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from conftest import Stack
from support import read_sse

from dreamforge.api.schemas import LogEvent

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT.parent / "shared" / "seeds" / "masters-10-openapi-makefile-cli.md"
OUR_OPENAPI = ROOT / "docs" / "openapi" / "openapi.v1.json"

if not SEED.is_file():
    pytest.skip(f"the seed contract is not at {SEED} (no ../shared here)", allow_module_level=True)

# Free-form objects whose content is not typed by any contract: a model's `parameters_schema` is a JSON
# Schema document, in which `null` is a legitimate value (`"default": null`).
FREE_FORM = frozenset({"parameters_schema"})

JOB: dict[str, Any] = {"type": "generate", "prompt": "a seed-contract check", "width": 64, "height": 64}


# --- the two contracts ----------------------------------------------------------------------------


def _seed_yaml(markdown: str) -> str:
    """The seed's ```yaml block, with its one slip mended: an unquoted `: ` inside a flow-mapping value
    (`description: SSE events: progress, ...`) is quoted."""
    block = re.search(r"```yaml\n(.*?)```", markdown, re.DOTALL)
    assert block, "the seed has no ```yaml block"
    return re.sub(r"(description: )([^\"'{}\n]*?: [^{}\n]*?)( })", r'\1"\2"\3', block.group(1))


@cache
def seed_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(_seed_yaml(SEED.read_text()))
    assert spec["openapi"].startswith("3.0")
    return spec


@cache
def our_spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(OUR_OPENAPI.read_text())
    return spec


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _closed(node: Any) -> Any:
    """A copy of a schema in which every object with `properties` and no `additionalProperties` is closed."""
    if isinstance(node, list):
        return [_closed(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _closed(v) for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _is_uuid(value: object) -> bool:
    return not isinstance(value, str) or str(uuid.UUID(value)) == value.lower()


def _is_date_time(value: object) -> bool:
    # RFC 3339 wants the offset; a naive timestamp would be read in whatever zone the client is in.
    return not isinstance(value, str) or (
        "T" in value and datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None
    )


def _is_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return bool(parts.scheme in ("http", "https") and parts.netloc)


# Formats checked the same way whatever optional packages jsonschema finds installed.
FORMATS = jsonschema.FormatChecker(formats=())
FORMATS.checks("uuid", raises=ValueError)(_is_uuid)
FORMATS.checks("date-time", raises=ValueError)(_is_date_time)
FORMATS.checks("uri")(_is_uri)


def _errors(validator_cls: Any, schema: dict[str, Any], body: Any) -> list[str]:
    validator = validator_cls(schema, format_checker=FORMATS)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<body>'}: {e.message}"
        for e in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))
    ]


def assert_seed_valid(name: str, body: Any) -> None:
    """`body` satisfies the seed's `components.schemas[name]` (OpenAPI 3.0: a JSON Schema draft 4 dialect)."""
    components = seed_spec()["components"]
    schema = {"$ref": f"#/components/schemas/{name}", "components": components}
    errors = _errors(jsonschema.Draft4Validator, schema, body)
    assert not errors, f"not a seed {name}: {errors}\n{json.dumps(body, indent=1)[:3000]}"


def assert_documented(name: str, body: Any, schema: dict[str, Any] | None = None) -> None:
    """`body` satisfies our OpenAPI's schema `name` with every object closed: nothing undocumented is sent,
    and nothing the document types as non-nullable is `null` (OpenAPI 3.1: JSON Schema 2020-12)."""
    if schema is None:
        root = {"$ref": f"#/components/schemas/{name}", "components": our_spec()["components"]}
    else:
        root = schema
    errors = _errors(jsonschema.Draft202012Validator, _closed(root), body)
    assert not errors, f"not our documented {name}: {errors}\n{json.dumps(body, indent=1)[:3000]}"


def null_paths(node: Any, path: str = "") -> list[str]:
    """Where `node` holds a `null` (free-form objects aside)."""
    if node is None:
        return [path or "<body>"]
    if isinstance(node, dict):
        return [p for k, v in node.items() if k not in FREE_FORM for p in null_paths(v, f"{path}/{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in null_paths(v, f"{path}/{i}")]
    return []


def assert_body(name: str, body: Any) -> None:
    """The seed's schema, our documented schema, and no `null` anywhere."""
    assert not null_paths(body), f"{name} sends null at {null_paths(body)}: {body}"
    assert_seed_valid(name, body)
    assert_documented(name, body)


def _json(resp: httpx.Response, status: int) -> Any:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    return resp.json()


# --- the contracts themselves ---------------------------------------------------------------------


def test_the_seed_parses_and_leaves_room_for_extensions() -> None:
    spec = seed_spec()
    sse = spec["paths"]["/jobs/{id}/progress/stream"]["get"]["responses"]["200"]["content"]
    assert sse["text/event-stream"]["schema"]["description"].startswith("SSE events: progress")
    # The seed closes no schema and declares nothing nullable: every extension of ours is allowed as
    # long as our OpenAPI documents it (checked per body below), and a `null` never satisfies a seed type.
    for node in _walk(spec):
        assert node.get("additionalProperties") is not False, node
        assert "nullable" not in node, node


def test_our_openapi_types_no_response_field_as_nullable() -> None:
    """Response schemas (what the routes answer with) say exactly what is sent: no `null` branch, and
    a field that may be absent is not `required` (nullable `X | None` fields became optional `X`)."""
    spec = our_spec()
    schemas = spec["components"]["schemas"]
    refs = {
        s["$ref"].rsplit("/", 1)[-1]
        for path in spec["paths"].values()
        for op in path.values()
        for resp in op.get("responses", {}).values()
        for media in resp.get("content", {}).values()
        for s in _walk(media.get("schema", {}))
        if "$ref" in s
    }
    # What the responses reach through their own `$ref`s.
    todo = list(refs)
    while todo:
        for s in _walk(schemas[todo.pop()]):
            name = s.get("$ref", "").rsplit("/", 1)[-1]
            if name and name not in refs:
                refs.add(name)
                todo.append(name)
    assert {"JobStatusResponse", "Artifact", "ProgressItem", "ModelDescriptor", "ErrorResponse"} <= refs
    for name in sorted(refs):
        for node in _walk(schemas[name]):
            assert {"type": "null"} not in node.get("anyOf", []), f"{name} has a nullable field: {node}"
            assert node.get("type") != "null", name
    status = schemas["JobStatusResponse"]
    assert "error" in status["properties"] and "error" not in status.get("required", [])
    assert set(schemas["ErrorResponse"]["required"]) == {"code", "message", "details", "correlation_id"}


# --- real answers ---------------------------------------------------------------------------------


def _log_lines(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    resp = client.get(f"/jobs/{job_id}/logs")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in resp.text.splitlines()]
    # The seed names LogEvent but gives no schema for it; ours is the documented one.
    schema = LogEvent.model_json_schema(mode="serialization")
    for line in lines:
        assert not null_paths(line), line
        assert_documented("LogEvent", line, schema)
    return lines


def _check_job_reads(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """GET the job, its progress, artifacts and logs, holding each to the contracts; returns the job."""
    status: dict[str, Any] = _json(client.get(f"/jobs/{job_id}"), 200)
    assert_body("JobStatusResponse", status)
    progress = _json(client.get(f"/jobs/{job_id}/progress"), 200)
    assert_body("ProgressResponse", progress)
    for item in progress["items"]:
        assert_seed_valid("ProgressItem", item)
    artifacts = _json(client.get(f"/jobs/{job_id}/artifacts"), 200)
    assert_body("ArtifactListResponse", artifacts)
    _log_lines(client, job_id)
    return status


def test_a_job_from_creation_to_success(client: httpx.Client) -> None:
    # A job ahead of ours keeps it queued for a while, so its queued and running states are seen too.
    ahead = _json(client.post("/jobs", json={**JOB, "steps": 12, "count": 2}), 202)
    assert_body("JobCreatedResponse", ahead)
    created = _json(client.post("/jobs", json={**JOB, "steps": 3, "count": 2, "seed": 11}), 202)
    assert_body("JobCreatedResponse", created)
    assert created["job"]["status"] == "queued"
    job_id = created["job"]["id"]

    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 120
    while True:
        status = _check_job_reads(client, job_id)
        seen.setdefault(status["status"], status)
        if status["status"] in ("succeeded", "failed", "canceled"):
            break
        assert time.monotonic() < deadline, f"job {job_id} did not finish in 120 s: {status}"
    assert "queued" in seen, f"job {job_id} was never seen queued: {sorted(seen)}"
    assert seen["queued"]["summary"]["completed"] == 0
    for field in ("started_at", "finished_at", "error", "cancel_requested_at"):
        assert field not in seen["queued"], seen["queued"]
    final = seen["succeeded"]
    assert "error" not in final and "cancel_requested_at" not in final
    datetime.fromisoformat(final["finished_at"])

    artifacts = client.get(f"/jobs/{job_id}/artifacts").json()["artifacts"]
    assert [a["item_index"] for a in artifacts] == [0, 1]
    for art in artifacts:
        assert_seed_valid("Artifact", art)
        assert isinstance(art["seed"], int) and art["url"] and art["expires_at"]
    progress = client.get(f"/jobs/{job_id}/progress").json()
    assert progress["progress"] == 1.0 and all(isinstance(i["seed"], int) for i in progress["items"])

    lines = _log_lines(client, job_id)
    assert any("item_index" in line for line in lines) and any("item_index" not in line for line in lines)

    # The SSE stream (the seed types its body as text only): every event's data is null-free, an
    # `artifact` event embeds a seed Artifact, and a succeeded job's `done` carries no `error`.
    events = read_sse(client, f"/jobs/{job_id}/progress/stream")
    for event in events:
        assert not null_paths(event.data), (event.event, event.data)
        if event.event == "artifact":
            assert_seed_valid("Artifact", event.data["artifact"])
            assert_documented("Artifact", event.data["artifact"])
    done = events[-1]
    assert done.event == "done" and done.data["status"] == "succeeded" and "error" not in done.data
    assert [e.event for e in events].count("artifact") == 2


def test_models_list_and_detail(client: httpx.Client) -> None:
    listed = _json(client.get("/models"), 200)
    assert_body("ModelListResponse", listed)
    assert listed["models"]
    for summary in listed["models"]:
        detail = _json(client.get(f"/models/{summary['id']}"), 200)
        assert_body("ModelDescriptor", detail)
        assert_seed_valid("ModelSummary", detail)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", f"/jobs/{uuid.UUID(int=1)}", None, 404),
        ("GET", f"/jobs/{uuid.UUID(int=1)}/artifacts", None, 404),
        ("GET", f"/jobs/{uuid.UUID(int=1)}/logs", None, 404),
        ("GET", f"/jobs/{uuid.UUID(int=1)}/progress", None, 404),
        ("GET", f"/jobs/{uuid.UUID(int=1)}/progress/stream", None, 404),
        ("GET", f"/models/{uuid.UUID(int=1)}", None, 404),
        ("GET", "/no-such-route", None, 404),
        ("GET", "/jobs/not-a-uuid", None, 422),
        ("GET", "/models/not-a-uuid", None, 422),
        ("POST", "/jobs", {**JOB, "width": 63}, 422),
        ("POST", "/jobs", {"type": "generate"}, 422),
        # No body at all: the error is the whole body's, so its entry has no `field` (left out, not null).
        ("POST", "/jobs", None, 422),
    ],
)
def test_error_responses(client: httpx.Client, method: str, path: str, body: Any, status: int) -> None:
    resp = client.request(method, path, json=body)
    error = _json(resp, status)
    assert_body("ErrorResponse", error)
    assert not null_paths(error["details"]), error
    assert error["correlation_id"] == resp.headers["x-request-id"]


def test_idempotency_conflict_is_an_error_response(client: httpx.Client) -> None:
    key = {"Idempotency-Key": f"seed-{uuid.uuid4()}"}
    assert_body("JobCreatedResponse", _json(client.post("/jobs", json=JOB, headers=key), 202))
    conflict = _json(client.post("/jobs", json={**JOB, "prompt": "another"}, headers=key), 409)
    assert_body("ErrorResponse", conflict)


def test_healthz(server: Stack) -> None:
    # Not in the seed; ours documents it.
    body = _json(httpx.get(f"{server.api.root}/healthz", timeout=10), 200)
    assert body == {"status": "ok"}
    assert_documented("HealthResponse", body)
