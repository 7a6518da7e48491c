"""JSON log lines, the context ids they carry, and the metrics helpers that need no server."""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.parser import text_string_to_metric_families

from dreamforge.observability import metrics
from dreamforge.observability.context import item_context, job_context, request_id_var
from dreamforge.observability.http import route_template
from dreamforge.observability.logs import JsonFormatter


def _record(message: str = "hello %s", args: Any = ("world",), **extra: Any) -> logging.LogRecord:
    return logging.getLogger("dreamforge.test").makeRecord(
        "dreamforge.test", logging.INFO, __file__, 1, message, args, None, extra=extra or None
    )


def _line(record: logging.LogRecord) -> dict[str, Any]:
    text = JsonFormatter().format(record)
    assert "\n" not in text
    data: dict[str, Any] = json.loads(text)
    return data


def test_a_line_has_the_base_fields() -> None:
    line = _line(_record())
    assert line["message"] == "hello world"
    assert line["level"] == "INFO"
    assert line["logger"] == "dreamforge.test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["ts"])
    assert not {"request_id", "job_id", "item_index"} & set(line)


def test_context_ids_are_added_while_set() -> None:
    job_id = uuid.uuid4()
    token = request_id_var.set("req-1")
    try:
        with job_context(job_id), item_context(3):
            inside = _line(_record())
        after_item = _line(_record())
    finally:
        request_id_var.reset(token)
    assert inside["request_id"] == "req-1"
    assert inside["job_id"] == str(job_id)
    assert inside["item_index"] == 3
    assert after_item["request_id"] == "req-1"
    assert "job_id" not in after_item and "item_index" not in after_item
    assert "request_id" not in _line(_record())


def test_ids_from_extra_win_and_other_extras_are_kept() -> None:
    with job_context("job-from-context"):
        line = _line(_record(job_id="job-from-extra", item_index=0, attempt=2, color_message="x"))
    assert line["job_id"] == "job-from-extra"
    # Index 0 is an index, not a missing value.
    assert line["item_index"] == 0
    assert line["attempt"] == 2
    assert "color_message" not in line


def test_exceptions_stay_on_one_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = _line(record)
    assert "ValueError: boom" in line["exc_info"]
    assert "Traceback" in line["exc_info"]


def test_values_json_cannot_write_become_strings() -> None:
    line = _line(_record("%s", (object(),), path=Path("/tmp/x")))
    assert line["message"].startswith("<object object")
    assert line["path"] == "/tmp/x"


def test_uvicorn_access_lines_get_http_fields() -> None:
    record = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/v1/jobs/x", "1.1", 200),
        None,
    )
    line = _line(record)
    assert line["message"] == '127.0.0.1:5000 - "GET /v1/jobs/x HTTP/1.1" 200'
    assert (line["method"], line["path"], line["status"]) == ("GET", "/v1/jobs/x", 200)


class _Route:
    def __init__(self, path: str) -> None:
        from starlette.routing import compile_path

        self.path = path
        self.path_regex = compile_path(path)[0]


@pytest.mark.parametrize(
    ("route_path", "request_path", "expected"),
    [
        ("/jobs/{id}", "/v1/jobs/123", "/v1/jobs/{id}"),
        ("/v1/jobs/{id}", "/v1/jobs/123", "/v1/jobs/{id}"),
        ("/metrics", "/metrics", "/metrics"),
        ("/files/{key:path}", "/v1/files/v1/files/a.png", "/v1/files/{key:path}"),
    ],
)
def test_route_template_is_the_template_never_the_path(
    route_path: str, request_path: str, expected: str
) -> None:
    scope = {"type": "http", "path": request_path, "route": _Route(route_path)}
    assert route_template(scope) == expected


def test_a_request_no_route_matched_has_one_label() -> None:
    assert route_template({"type": "http", "path": "/x/1"}) == metrics.UNMATCHED_ROUTE


def test_gpu_memory_is_not_reported_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert list(metrics.GpuMemoryCollector().collect()) == []
    assert "torch" not in sys.modules


def test_gpu_memory_is_read_from_an_initialised_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = SimpleNamespace(
        is_initialized=lambda: True,
        device_count=lambda: 2,
        memory_allocated=lambda i: 1000 * (i + 1),
        memory_reserved=lambda i: 4000 * (i + 1),
    )
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    families = {f.name: f for f in metrics.GpuMemoryCollector().collect()}
    allocated = families["dreamforge_gpu_memory_allocated_bytes"].samples
    reserved = families["dreamforge_gpu_memory_reserved_bytes"].samples
    assert [(s.labels["device"], s.value) for s in allocated] == [("0", 1000), ("1", 2000)]
    assert [(s.labels["device"], s.value) for s in reserved] == [("0", 4000), ("1", 8000)]

    # CUDA not initialised in this process (a CPU worker): nothing, and CUDA is not started for it.
    monkeypatch.setattr(cuda, "is_initialized", lambda: False)
    assert list(metrics.GpuMemoryCollector().collect()) == []


def test_the_exposition_parses_and_carries_extra_collectors() -> None:
    extra = CollectorRegistry()
    Gauge("dreamforge_test_extra", "extra", registry=extra).set(7)
    body, content_type = metrics.exposition("", [extra])
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["dreamforge_test_extra"].samples[0].value == 7
    assert "dreamforge_jobs" in families
    assert "dreamforge_images" in families
    assert {s.labels["stage"] for s in families["dreamforge_stage_duration_seconds"].samples} >= set(
        metrics.STAGES
    )


def test_a_failed_stage_is_not_timed() -> None:
    def count() -> float:
        for family in text_string_to_metric_families(metrics.exposition("")[0].decode()):
            for sample in family.samples:
                if (
                    sample.name == "dreamforge_stage_duration_seconds_count"
                    and sample.labels["stage"] == "encode"
                ):
                    return sample.value
        raise AssertionError("no encode series")

    before = count()
    with metrics.stage_timer("encode"):
        pass
    with pytest.raises(RuntimeError), metrics.stage_timer("encode"):
        raise RuntimeError("fails")
    assert count() == before + 1
