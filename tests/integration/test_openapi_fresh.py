"""The committed OpenAPI document is what the app serves (run `make openapi` after API changes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _render() -> str:
    spec = importlib.util.spec_from_file_location("export_openapi", ROOT / "scripts" / "export_openapi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text: str = module.render()
    return text


def test_committed_openapi_is_current() -> None:
    committed = (ROOT / "docs" / "openapi" / "openapi.v1.json").read_text()
    assert committed == _render(), "docs/openapi/openapi.v1.json is stale: run `make openapi`"


def test_contract_paths_and_operations() -> None:
    doc = json.loads(_render())
    ops = {op["operationId"] for path in doc["paths"].values() for op in path.values()}
    assert {
        "createJob",
        "getJob",
        "listArtifacts",
        "getLogs",
        "getProgress",
        "streamProgress",
        "listModels",
        "getModel",
    } <= ops
    for path in (
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/artifacts",
        "/v1/jobs/{id}/logs",
        "/v1/jobs/{id}/progress",
        "/v1/jobs/{id}/progress/stream",
        "/v1/models",
        "/v1/models/{id}",
    ):
        assert path in doc["paths"]
    create = doc["paths"]["/v1/jobs"]["post"]
    assert set(create["responses"]) >= {"202", "409", "422", "503"}
    assert doc["paths"]["/v1/jobs/{id}/logs"]["get"]["responses"]["200"]["content"].keys() == {
        "application/x-ndjson"
    }
    assert (
        "text/event-stream"
        in doc["paths"]["/v1/jobs/{id}/progress/stream"]["get"]["responses"]["200"]["content"]
    )
