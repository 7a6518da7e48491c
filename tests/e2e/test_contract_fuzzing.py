"""schemathesis against `docs/openapi/openapi.v1.json` and a real API process, auth off and on.

Every operation is fuzzed (examples, coverage, fuzzing), then the stateful phase follows the
OpenAPI links from a created job (get, artifacts, logs, progress, cancel). Checks: no server
error, documented status codes, content types, headers and response schemas, and rejection of
invalid data. The API runs distributed with no worker, so accepted jobs stay queued (nothing
renders, however large the fuzzer's sizes) and cancel has queued jobs to end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import distributed_stack
from s3_server import MotoS3

from dreamforge.accounts.service import issue_key
from dreamforge.db.session import create_db_engine, make_session_factory, transaction

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "docs" / "openapi" / "openapi.v1.json"
# Seconds of generated traffic per run: enough for every operation's examples, coverage cases and a
# few hundred stateful steps on this 2-core machine, small enough for CI.
BUDGET_SECONDS = 45


def _schemathesis(base: str, report: Path, *headers: str) -> subprocess.CompletedProcess[str]:
    args = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        str(SCHEMA),
        "--url",
        base.removesuffix("/v1"),
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_headers_conformance,response_schema_conformance,negative_data_rejection",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-time",
        str(BUDGET_SECONDS),
        "--max-examples",
        "30",
        "--workers",
        "2",
        "--request-timeout",
        "10",
        "--seed",
        "20261202",
        "--generation-database",
        "none",
        "--report",
        "junit",
        "--report-dir",
        str(report),
        "--no-color",
    ]
    for header in headers:
        args += ["--header", header]
    # Run in the report folder: schemathesis keeps a .schemathesis folder in its working directory.
    return subprocess.run(args, capture_output=True, text=True, timeout=BUDGET_SECONDS * 6, cwd=report.parent)


@pytest.mark.parametrize("auth", ["off", "required"])
def test_the_running_api_honours_its_openapi_contract(
    auth: str, tmp_path: Path, tiny_model_dir: Path, moto_s3: MotoS3
) -> None:
    with distributed_stack(tmp_path / "var", tiny_model_dir, moto_s3, workers=0, DF_AUTH=auth) as stack:
        headers = []
        if auth == "required":
            engine = create_db_engine(stack.db_url)
            try:
                with transaction(make_session_factory(engine)) as s:
                    _, key = issue_key(s, stack.env["DF_SIGNING_SECRET"].encode(), name="fuzzer")
            finally:
                engine.dispose()
            headers.append(f"Authorization: Bearer {key}")
        done = _schemathesis(stack.base, tmp_path / "report", *headers)
    summary = done.stdout[-6000:]
    assert done.returncode == 0, f"{summary}\n{done.stderr[-3000:]}"
    assert "No issues found" in done.stdout or " passed" in done.stdout, summary
