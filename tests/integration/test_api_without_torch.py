"""The API process starts and answers without torch or diffusers (they load only when a job runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import download_env, redis_url
from fakehubs import FakeCivitai, FakeHub

PROBE = """
import sys
from fastapi.testclient import TestClient
from dreamforge.api.app import create_app
with TestClient(create_app()) as client:
    assert client.get('/v1/models').status_code == 200
    assert client.post('/v1/jobs', json={}).status_code == 422
loaded = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)
print('loaded:', loaded)
sys.exit(1 if loaded else 0)
"""


@pytest.mark.parametrize("topology", ["embedded", "distributed"])
def test_api_serves_without_importing_the_engine_stack(
    tmp_path: Path, topology: str, request: pytest.FixtureRequest
) -> None:
    env = {"DF_DATA_DIR": str(tmp_path / "var"), "PATH": "/usr/bin:/bin"}
    if topology == "distributed":
        # The distributed API process: Celery publisher, Redis listener, reconciler, Postgres.
        env |= {"DF_REDIS_URL": redis_url(), "DF_DB_URL": request.getfixturevalue("pg_url")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loaded: []" in result.stdout


DOWNLOAD_PROBE = """
import sys
from dreamforge.cli.main import app
try:
    app(['model', 'download', 'civitai:31', '-q'], standalone_mode=False)
finally:
    loaded = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)
    print('loaded:', loaded)
sys.exit(1 if loaded else 0)
"""


def test_model_download_runs_without_the_engine_stack(
    tmp_path: Path,
    fake_hub: FakeHub,
    fake_civitai: FakeCivitai,
    tiny_single_file: tuple[Path, Path],
) -> None:
    """Models can be installed from a host or image that has no torch (e.g. the API image)."""
    fake_civitai.add_version(31, 3, tiny_single_file[0].read_bytes())
    env = download_env(tmp_path / "var", fake_hub, fake_civitai)
    result = subprocess.run(
        [sys.executable, "-c", DOWNLOAD_PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loaded: []" in result.stdout
    assert '"status": "installed"' in result.stdout
