"""The webhook CLI: secrets as `dreamforge` prints them, and the job commands' requests (no renders).

The secret commands run as subprocesses on a fresh data directory, as a user runs them; the `job`
commands run in-process against an httpx mock of the API, which records what they send.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import cli_env, df
from typer.testing import CliRunner

from dreamforge.cli import jobs
from dreamforge.cli.main import app
from dreamforge.client import DreamForgeClient
from dreamforge.webhooks.signing import valid_secret

JOB_ID = uuid.uuid4()
DELIVERY_ID = uuid.uuid4()
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).isoformat()
DELIVERY: dict[str, Any] = {
    "id": str(DELIVERY_ID),
    "webhook_id": f"msg_{DELIVERY_ID.hex}",
    "event": "completed",
    "url": "https://hooks.example.com/df",
    "status": "failed",
    "attempts": 8,
    "last_status_code": 500,
    "last_error": "HTTP 500",
    "created_at": NOW,
}


def test_the_service_secret_is_stable_per_data_directory(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "var")
    first, second = df(env, "webhook-secret"), df(env, "webhook-secret", "--output", "table")
    assert first.code == 0 and second.code == 0, first.stderr + second.stderr
    secret = first.json["webhook_secret"]
    assert secret.startswith("whsec_") and valid_secret(secret)
    assert first.json["source"] == "derived"
    assert second.stdout.strip() == secret

    configured = "whsec_" + "A" * 44
    pinned = df({**env, "DF_WEBHOOK_SECRET": configured}, "webhook-secret")
    assert pinned.json == {"webhook_secret": configured, "source": "DF_WEBHOOK_SECRET"}
    bad = df({**env, "DF_WEBHOOK_SECRET": "not-a-secret"}, "webhook-secret")
    assert bad.code == 1 and "DF_WEBHOOK_SECRET" in bad.stderr


def test_apikey_create_shows_the_key_webhook_secret_once(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "var")
    created = df(env, "apikey", "create", "--name", "x")
    assert created.code == 0, created.stderr
    secret = created.json["webhook_secret"]
    assert secret.startswith("whsec_") and valid_secret(secret)
    assert "not shown again" in created.stderr
    # Each key has its own secret, and neither is the service's.
    other = df(env, "apikey", "create", "--name", "y", "--output", "table")
    assert other.code == 0, other.stderr
    key_line, secret_line = other.stdout.strip().splitlines()
    assert key_line.startswith("df_live_")
    assert secret_line.startswith("webhook secret: whsec_") and secret not in secret_line
    assert secret != df(env, "webhook-secret").json["webhook_secret"]
    listed = df(env, "apikey", "list").json["keys"]
    assert all("webhook_secret" not in k for k in listed)


Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Request]:
    """Route the job commands' client to a mock API; returns the requests it receives."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        if request.method == "POST" and path == "/v1/jobs":
            return httpx.Response(
                202,
                json={"job": {"id": str(JOB_ID), "status": "queued", "type": "generate", "created_at": NOW}},
            )
        if path == f"/v1/jobs/{JOB_ID}/webhooks":
            return httpx.Response(200, json={"deliveries": [DELIVERY]})
        if request.method == "POST" and path == f"/v1/jobs/{JOB_ID}/webhooks/{DELIVERY_ID}/redeliver":
            redelivered = {**DELIVERY, "status": "pending", "next_attempt_at": NOW}
            return httpx.Response(202, json=redelivered)
        return httpx.Response(404, json={"code": "not_found", "message": path, "details": {}})

    def client(api_base: str, **kwargs: Any) -> DreamForgeClient:
        return DreamForgeClient(api_base, transport=httpx.MockTransport(handle), **kwargs)

    monkeypatch.setattr(jobs, "DreamForgeClient", client)
    return seen


def _job(*args: str) -> Any:
    return CliRunner().invoke(app, ["job", *args], terminal_width=200)


def test_job_create_sends_the_webhook_and_its_events(api: list[httpx.Request]) -> None:
    size = ["--prompt", "a fox", "--width", "64", "--height", "64"]
    url = "https://hooks.example.com/df"
    result = _job(
        "create", *size, "--webhook", url, "--webhook-event", "start", "--webhook-event", "completed"
    )
    assert result.exit_code == 0, result.output
    body = json.loads(api[-1].content)
    assert body["webhook"] == url and body["webhook_events_filter"] == ["start", "completed"]

    assert _job("create", *size, "--webhook", url).exit_code == 0
    body = json.loads(api[-1].content)
    assert body["webhook"] == url and "webhook_events_filter" not in body  # the API's default

    assert _job("create", *size).exit_code == 0
    assert "webhook" not in json.loads(api[-1].content)

    sent = len(api)
    refused = _job("create", *size, "--webhook-event", "item")
    assert refused.exit_code == 2 and "--webhook-event needs --webhook" in refused.output
    assert len(api) == sent


def test_job_webhooks_lists_and_redeliver_resends(api: list[httpx.Request]) -> None:
    listed = _job("webhooks", str(JOB_ID))
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)["deliveries"][0]["id"] == str(DELIVERY_ID)
    table = _job("webhooks", str(JOB_ID), "--output", "table")
    assert table.exit_code == 0 and str(DELIVERY_ID) in table.stdout and "HTTP 500" in table.stdout

    again = _job("redeliver", str(JOB_ID), str(DELIVERY_ID))
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["status"] == "pending"
    assert (api[-1].method, api[-1].url.path) == (
        "POST",
        f"/v1/jobs/{JOB_ID}/webhooks/{DELIVERY_ID}/redeliver",
    )

    unknown = _job("redeliver", str(JOB_ID), str(uuid.uuid4()))
    assert unknown.exit_code == 1
