"""API keys and tenancy with `DF_AUTH=required`, driven over HTTP and the CLI as integrators would."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import embedded_stack
from support import DREAMFORGE, cli_env, df, read_sse, wait_for_status

from dreamforge.accounts.service import issue_key
from dreamforge.db.session import create_db_engine, make_session_factory, transaction

JOB: dict[str, Any] = {"type": "generate", "prompt": "a paper boat", "width": 64, "height": 64, "steps": 2}


class Keys:
    """The running service, and keys issued in its registry as `dreamforge apikey create` does."""

    def __init__(self, base: str, env: dict[str, str], db_url: str) -> None:
        self.base = base
        self.env = env
        self.db_url = db_url

    def issue(self, name: str, **quotas: Any) -> str:
        """A new key (in-process: a CLI run per key would cost seconds; one test runs the CLI)."""
        engine = create_db_engine(self.db_url)
        try:
            with transaction(make_session_factory(engine)) as s:
                _, key = issue_key(s, self.env["DF_SIGNING_SECRET"].encode(), name=name, **quotas)
        finally:
            engine.dispose()
        return key

    def client(self, key: str | None, *, header: str = "bearer") -> httpx.Client:
        headers = {}
        if key is not None:
            headers = {"Authorization": f"Bearer {key}"} if header == "bearer" else {"X-API-Key": key}
        return httpx.Client(base_url=self.base, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Keys]:
    data_dir = tmp_path_factory.mktemp("auth") / "var"
    with embedded_stack(data_dir, tiny_model_dir, DF_AUTH="required") as stack:
        yield Keys(stack.base, stack.env, stack.registry_url)


def _assert_401(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == 'Bearer realm="dreamforge"'
    body = response.json()
    assert body["code"] == "unauthorized"
    assert body["details"]["reason"] == reason
    assert body["correlation_id"] == response.headers["x-request-id"]


def test_requests_without_a_valid_key_are_401_but_health_is_open(keys: Keys) -> None:
    with keys.client(None) as anonymous:
        _assert_401(anonymous.post("/jobs", json=JOB), "missing")
        _assert_401(anonymous.get("/models"), "missing")
        assert httpx.get(keys.base.removesuffix("/v1") + "/healthz").status_code == 200
    with keys.client("df_live_" + "x" * 43) as forged:
        _assert_401(forged.get("/models"), "invalid")


def test_a_job_is_404_to_every_other_key_on_every_path(keys: Keys) -> None:
    a, b, admin = keys.issue("tenant-a"), keys.issue("tenant-b"), keys.issue("operator", admin=True)
    with keys.client(a) as ca, keys.client(b, header="x-api-key") as cb, keys.client(admin) as cadmin:
        job_id = ca.post("/jobs", json=JOB).json()["job"]["id"]
        assert read_sse(ca, f"/jobs/{job_id}/progress/stream")[-1].data["status"] == "succeeded"
        paths = ["", "/artifacts", "/logs", "/progress", "/progress/stream"]
        for path in paths:
            assert ca.get(f"/jobs/{job_id}{path}").status_code == 200, path
            hidden = cb.get(f"/jobs/{job_id}{path}")
            assert (hidden.status_code, hidden.json()["code"]) == (404, "not_found"), path
            assert cadmin.get(f"/jobs/{job_id}{path}").status_code == 200, path
        assert cb.post(f"/jobs/{job_id}/cancel").status_code == 404
        # Signed artifact URLs work without a key (they expire instead).
        url = ca.get(f"/jobs/{job_id}/artifacts").json()["artifacts"][0]["url"]
        assert httpx.get(url).status_code == 200


def test_idempotency_keys_of_two_api_keys_do_not_collide(keys: Keys) -> None:
    a, b = keys.issue("idem-a"), keys.issue("idem-b")
    with keys.client(a) as ca, keys.client(b) as cb:
        headers = {"Idempotency-Key": "order-17"}
        first = ca.post("/jobs", json=JOB, headers=headers)
        other = cb.post("/jobs", json={**JOB, "prompt": "something else"}, headers=headers)
        assert (first.status_code, other.status_code) == (202, 202)
        assert first.json()["job"]["id"] != other.json()["job"]["id"]
        replay = ca.post("/jobs", json=JOB, headers=headers)
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.json()["job"]["id"] == first.json()["job"]["id"]
        conflict = ca.post("/jobs", json={**JOB, "steps": 3}, headers=headers)
        assert conflict.status_code == 409
        assert conflict.json()["details"]["idempotency_key"] == "order-17"


def test_a_revoked_key_is_refused_at_once(keys: Keys) -> None:
    created = df(keys.env, "apikey", "create", "--name", "to-revoke")
    assert created.code == 0, created.stderr
    key = created.json["key"]
    assert key.startswith("df_live_") and "not shown again" in created.stderr
    with keys.client(key) as client:
        assert client.get("/models").status_code == 200
        run = df(keys.env, "apikey", "revoke", "to-revoke")
        assert run.code == 0, run.stderr
        assert run.json["revoked_at"]
        _assert_401(client.get("/models"), "revoked")
    listed = df(keys.env, "apikey", "list").json["keys"]
    assert "to-revoke" not in {k["name"] for k in listed}
    assert all("key" not in k and k["shown"].startswith("df_live_") for k in listed)


def test_quotas_answer_429_with_retry_after_and_name_the_limit(keys: Keys) -> None:
    busy = keys.issue("one-at-a-time", max_active_jobs=1)
    with keys.client(busy) as client:
        long = client.post("/jobs", json={**JOB, "steps": 200}).json()["job"]["id"]
        second = client.post("/jobs", json=JOB)
        assert second.status_code == 429, second.text
        assert second.json()["code"] == "quota_exceeded"
        assert second.json()["details"]["limit"] == "max_active_jobs"
        assert int(second.headers["retry-after"]) > 0
        client.post(f"/jobs/{long}/cancel")
        wait_for_status(client, long, {"canceled"})
        assert client.post("/jobs", json=JOB).status_code == 202

    daily = keys.issue("two-a-day", max_images_per_day=2)
    with keys.client(daily) as client:
        assert client.post("/jobs", json={**JOB, "count": 2}).status_code == 202
        over = client.post("/jobs", json=JOB)
        assert (over.status_code, over.json()["details"]["limit"]) == (429, "max_images_per_day")
        # The first job's images leave the rolling window a day after it was made.
        assert 86_000 < int(over.headers["retry-after"]) <= 86_400
        never = client.post("/jobs", json={**JOB, "count": 3})
        assert (never.status_code, never.json()["code"]) == (422, "limit_exceeded")


def test_the_cli_sends_its_key(keys: Keys, tmp_path: Path) -> None:
    key = keys.issue("cli-user")
    env = cli_env(tmp_path, DF_API_BASE=keys.base)
    refused = df(env, "job", "create", "--prompt", "x", "--width", "64", "--height", "64")
    assert refused.code == 1 and refused.error["code"] == "unauthorized"
    run = df(env, "job", "create", "--prompt", "x", "--width", "64", "--height", "64", "--steps", "2",
             "--wait", "--quiet", "--api-key", key)  # fmt: skip
    assert run.code == 0, run.stderr
    done = df(
        {**env, "DF_API_KEY": key}, "job", "artifacts", run.json["job"]["id"], "--download", str(tmp_path)
    )
    assert done.code == 0, done.stderr
    assert (tmp_path / "0.png").is_file()


def test_serve_refuses_a_public_address_without_auth(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "var")
    done = subprocess.run(
        [DREAMFORGE, "serve", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "refusing to serve 0.0.0.0 without authentication" in done.stderr
    assert "--insecure-no-auth" in done.stderr
