"""Shared fixtures: the tiny model (built once), databases, and an embedded server process."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from support import ServerProcess, cli_env

from dreamforge.config import Settings
from dreamforge.db.migrate import upgrade_to_head
from dreamforge.db.session import create_db_engine, make_session_factory, transaction
from dreamforge.registry.install import register_model

PG_ADMIN_URL = os.environ.get("DF_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _unavailable(what: str, exc: Exception) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required under CI=true but unreachable: {exc}")
    pytest.skip(f"{what} unreachable on loopback ({exc}); start it to run this test")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight SDXL pipeline folder, built once per session."""
    from dreamforge.engines.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_single_file(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny model as one original-layout .safetensors plus its config folder."""
    from dreamforge.engines.original_layout import copy_config_tree, write_single_file

    root = tmp_path_factory.mktemp("single")
    return write_single_file(tiny_model_dir, root / "tiny.safetensors"), copy_config_tree(
        tiny_model_dir, root / "config"
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded settings in a fresh data directory."""
    return Settings(data_dir=tmp_path / "var", signing_secret="test-secret", _env_file=None)


def register_tiny(db_url: str, tiny_model_dir: Path, name: str = "tiny-sdxl") -> str:
    """Migrate `db_url` and register the tiny model there; returns its id."""
    upgrade_to_head(db_url)
    engine = create_db_engine(db_url)
    try:
        with transaction(make_session_factory(engine)) as s:
            model = register_model(
                s, name=name, layout="diffusers", path=tiny_model_dir, source="tiny:random", is_tiny=True
            )
            return str(model.id)
    finally:
        engine.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty Postgres database on loopback, dropped afterwards."""
    import psycopg

    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"df_test_{uuid.uuid4().hex[:12]}"
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        _unavailable("PostgreSQL", exc)
        raise
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_server_env(data_dir: Path, tiny_model_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of an embedded server in `data_dir` whose registry holds the tiny model."""
    data_dir.mkdir(parents=True, exist_ok=True)
    register_tiny(f"sqlite:///{data_dir / 'dreamforge.db'}", tiny_model_dir)
    return cli_env(data_dir, DF_SIGNING_SECRET="e2e-secret", DF_SSE_PING_SECONDS="1", **extra)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[ServerProcess]:
    """A running `dreamforge serve` with the tiny model, shared by one test module."""
    data_dir = tmp_path_factory.mktemp("server") / "var"
    proc = ServerProcess(data_dir=data_dir, env=make_server_env(data_dir, tiny_model_dir)).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    """An HTTP client for the running server's /v1."""
    with httpx.Client(base_url=server.base, timeout=30) as c:
        yield c
