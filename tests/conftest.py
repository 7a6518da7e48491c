"""Shared fixtures: the tiny model (built once), databases, and an embedded server process."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fakehubs import FakeCivitai, FakeHub
from s3_server import MotoS3
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from support import ServerProcess, WorkerProcess, cli_env

# Test modules import transformers and diffusers, which import torchvision: make it importable first.
import dreamforge.engines.torchvision_compat  # noqa: F401
from dreamforge.api.schemas import DEFAULT_PROVIDER, JobCreateRequest
from dreamforge.config import Settings
from dreamforge.db.migrate import upgrade_to_head
from dreamforge.db.session import create_db_engine, make_session_factory, transaction
from dreamforge.registry.install import register_tiny_model

PG_ADMIN_URL: str = os.environ.get(
    "DF_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _unavailable(what: str, exc: Exception) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required under CI=true but unreachable: {exc}")
    pytest.skip(f"{what} unreachable on loopback ({exc}); start it to run this test")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight SDXL pipeline folder, built once per session."""
    from dreamforge.registry.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_single_file(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny model as one original-layout .safetensors plus its config folder."""
    from dreamforge.registry.original_layout import copy_config_tree, write_single_file

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
            return str(register_tiny_model(s, name, tiny_model_dir).id)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def tiny_upscalers(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Tiny random-weight ESRGAN upscalers (`.safetensors`) by native scale, built once per session."""
    from dreamforge.registry.tiny import build_tiny_upscaler

    root = tmp_path_factory.mktemp("tiny-upscalers")
    return {scale: build_tiny_upscaler(root / f"x{scale}.safetensors", scale=scale) for scale in (2, 4)}


def register_upscaler_file(db_url: str, path: Path, name: str) -> str:
    """Migrate `db_url` and register the upscaler file at `path` there (enabled); returns its id."""
    from dreamforge.registry.install import register_upscaler

    upgrade_to_head(db_url)
    engine = create_db_engine(db_url)
    try:
        with transaction(make_session_factory(engine)) as s:
            return str(register_upscaler(s, name=name, path=path, source="tiny:random", is_tiny=True).id)
    finally:
        engine.dispose()


def stage_job(sessions: sessionmaker[Session], **params: object) -> uuid.UUID:
    """Commit a generate job (64x64, 2 steps unless `params` say otherwise) as the API would."""
    from dreamforge.jobs.service import create_job

    body = {"type": "generate", "prompt": "a red cube", "width": 64, "height": 64, "steps": 2, **params}
    with transaction(sessions) as s:
        job, _ = create_job(s, JobCreateRequest.model_validate(body), None, providers=[DEFAULT_PROVIDER])
        return job.id


def pg_port() -> int:
    """The port of the test Postgres server."""
    return make_url(PG_ADMIN_URL).port or 5432


@contextmanager
def pg_database() -> Iterator[str]:
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
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty Postgres database on loopback, dropped afterwards."""
    with pg_database() as url:
        yield url


def redis_url() -> str:
    """The shared Redis on loopback (DF_TEST_REDIS_URL); skips, or fails under CI=true, if it is down."""
    import redis

    url = os.environ.get("DF_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        _unavailable("Redis", exc)
    finally:
        client.close()
    return url


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """moto's S3 server on loopback, shared by the session; tests keep apart by bucket."""
    server = MotoS3().start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Stack:
    """A running topology as a user sees it: an API base URL, and in the distributed one, workers."""

    topology: str
    api: ServerProcess
    env: dict[str, str]
    workers: list[WorkerProcess] = field(default_factory=list)
    db_url: str = ""
    bucket: str = ""

    @property
    def base(self) -> str:
        return self.api.base

    @property
    def registry_url(self) -> str:
        """The database the stack's registry lives in (what `dreamforge model ...` would use)."""
        return self.db_url or f"sqlite:///{self.api.data_dir / 'dreamforge.db'}"

    def add_worker(
        self, *, queue_flag: bool = False, command: list[str] | None = None, **extra_env: str
    ) -> WorkerProcess:
        """Start one more `dreamforge worker` on the same services.

        `queue_flag`: name the stack's queue with `--queue` while the worker's DF_QUEUE names a queue
        nobody consumes, so anything the worker sends by its settings alone would be stranded.
        `command` runs the worker through a wrapper; `extra_env` adds settings of its own.
        """
        env, args = {**self.env, **extra_env}, []
        if queue_flag:
            env["DF_QUEUE"] = f"{self.env['DF_QUEUE']}.unused"
            args = ["--queue", self.env["DF_QUEUE"]]
        worker = WorkerProcess(data_dir=self.api.data_dir, env=env, args=args)
        if command is not None:
            worker.command = command
        worker.start()
        self.workers.append(worker)
        return worker

    def add_webhook_worker(self) -> WorkerProcess:
        """Start a `dreamforge worker --queue <DF_WEBHOOK_QUEUE>`: the distributed webhook deliverer."""
        worker = WorkerProcess(
            data_dir=self.api.data_dir, env=self.env, args=["--queue", self.env["DF_WEBHOOK_QUEUE"]]
        )
        worker.start()
        self.workers.append(worker)
        return worker

    def add_remote_worker(self, command: list[str] | None = None) -> WorkerProcess:
        """Start a `dreamforge worker --queue <DF_REMOTE_QUEUE>`: remote-provider jobs, no GPU."""
        worker = WorkerProcess(
            data_dir=self.api.data_dir, env=self.env, args=["--queue", self.env["DF_REMOTE_QUEUE"]]
        )
        if command is not None:
            worker.command = command
        worker.start()
        self.workers.append(worker)
        return worker

    def add_api(self) -> ServerProcess:
        """Start another API process on the same services (another replica)."""
        return ServerProcess(data_dir=self.api.data_dir, env=self.env).start()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.api.stop()


@contextmanager
def embedded_stack(data_dir: Path, tiny_model_dir: Path, **extra: str) -> Iterator[Stack]:
    """`dreamforge serve` alone: SQLite, local artifacts, the in-process worker."""
    env = make_server_env(data_dir, tiny_model_dir, **extra)
    stack = Stack("embedded", ServerProcess(data_dir=data_dir, env=env).start(), env)
    try:
        yield stack
    finally:
        stack.stop()


@contextmanager
def distributed_stack(
    data_dir: Path,
    tiny_model_dir: Path,
    s3: MotoS3,
    *,
    workers: int = 1,
    db_port: int | None = None,
    **extra: str,
) -> Iterator[Stack]:
    """API + Celery workers on a fresh Postgres database, the loopback Redis and moto's S3.

    Each stack gets its own queue name and bucket, so stacks never see each other's messages.
    `db_port` sends the services' database traffic through another port (a test's proxy).
    """
    broker = extra.pop("DF_REDIS_URL", None) or redis_url()
    with pg_database() as db_url:
        register_tiny(db_url, tiny_model_dir)
        tag = uuid.uuid4().hex[:8]
        bucket = f"df-e2e-{tag}"
        served_db_url = (
            db_url
            if db_port is None
            else make_url(db_url).set(port=db_port).render_as_string(hide_password=False)
        )
        defaults = {
            "DF_DB_URL": served_db_url,
            "DF_REDIS_URL": broker,
            "DF_QUEUE": f"gpu.default.test-{tag}",
            "DF_WEBHOOK_QUEUE": f"webhooks.test-{tag}",
            "DF_REMOTE_QUEUE": f"remote.default.test-{tag}",
            "DF_SIGNING_SECRET": "e2e-secret",
            "DF_SSE_PING_SECONDS": "1",
            # Short leases and sweeps, so a killed worker's job is recovered within seconds.
            "DF_LEASE_SECONDS": "3",
            "DF_RECOVERY_INTERVAL_SECONDS": "0.5",
            "DF_STORAGE_RETRY_ATTEMPTS": "2",
            # Every worker of one machine's tests would want the default metrics port; a test that
            # scrapes a worker gives it a port of its own.
            "DF_METRICS_PORT": "0",
            **s3.env(bucket),
        }
        # `extra` overrides any of these (a test's proxy as the S3 endpoint, more storage retries).
        env = cli_env(data_dir, **{**defaults, **extra})
        data_dir.mkdir(parents=True, exist_ok=True)
        stack = Stack(
            "distributed", ServerProcess(data_dir=data_dir, env=env), env, db_url=db_url, bucket=bucket
        )
        try:
            stack.api.start()
            for _ in range(workers):
                stack.add_worker()
            yield stack
        finally:
            stack.stop()


def make_server_env(data_dir: Path, tiny_model_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of an embedded server in `data_dir` whose registry holds the tiny model."""
    data_dir.mkdir(parents=True, exist_ok=True)
    register_tiny(f"sqlite:///{data_dir / 'dreamforge.db'}", tiny_model_dir)
    return cli_env(data_dir, **{"DF_SIGNING_SECRET": "e2e-secret", "DF_SSE_PING_SECONDS": "1", **extra})


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[Stack]:
    """The service with the tiny model, shared by one test module, in each topology.

    The same end-to-end tests run against both: only DF_* settings differ.
    """
    with topology_stack(request, request.param, tmp_path_factory.mktemp(request.param) / "var") as stack:
        yield stack


@contextmanager
def topology_stack(request: pytest.FixtureRequest, topology: str, data_dir: Path) -> Iterator[Stack]:
    """A fresh stack of `topology` ("embedded" or "distributed") with the tiny model installed."""
    tiny_model_dir: Path = request.getfixturevalue("tiny_model_dir")
    if topology == "embedded":
        with embedded_stack(data_dir, tiny_model_dir) as stack:
            yield stack
    else:
        s3: MotoS3 = request.getfixturevalue("moto_s3")
        with distributed_stack(data_dir, tiny_model_dir, s3) as stack:
            yield stack


@pytest.fixture
def env(server: Stack, tmp_path: Path) -> dict[str, str]:
    """A user's shell for the CLI: DF_API_BASE points at the running server."""
    return cli_env(tmp_path / "client", DF_API_BASE=server.base)


@pytest.fixture
def client(server: Stack) -> Iterator[httpx.Client]:
    """An HTTP client for the running server's /v1."""
    with httpx.Client(base_url=server.base, timeout=30) as c:
        yield c


def folder_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` by its `/`-separated relative path (a repo's content for the fake Hub)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


SDXL_CONFIG_REPO = "stabilityai/stable-diffusion-xl-base-1.0"


@pytest.fixture
def fake_hub(tiny_model_dir: Path) -> Iterator[FakeHub]:
    """A local Hugging Face Hub. Its SDXL base repo holds the tiny pipeline's configs and tokenizers,
    which is what a single-file tiny checkpoint loads against (the real repo's would not fit it)."""
    hub = FakeHub().start()
    configs = {
        path: data
        for path, data in folder_bytes(tiny_model_dir).items()
        if not path.endswith(".safetensors") and ("/" in path or path == "model_index.json")
    }
    hub.add_repo(SDXL_CONFIG_REPO, configs)
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def fake_civitai() -> Iterator[FakeCivitai]:
    """A local Civitai: the model-version API, the download endpoint and its storage CDN."""
    civitai = FakeCivitai().start()
    try:
        yield civitai
    finally:
        civitai.stop()


def download_env(data_dir: Path, hub: FakeHub, civitai: FakeCivitai, **extra: str) -> dict[str, str]:
    """Environment of a `dreamforge model download` process that reaches only the fake sources."""
    env = cli_env(
        data_dir,
        HF_ENDPOINT=hub.url,
        DF_CIVITAI_ENDPOINT=civitai.url,
        HF_HOME=str(data_dir / "hf-home"),
        **extra,
    )
    # Downloading is the one thing allowed to reach a hub: the fake one.
    env.pop("HF_HUB_OFFLINE", None)
    for name in ("HF_TOKEN", "CIVITAI_TOKEN"):
        if name not in extra:
            env.pop(name, None)
    return env
