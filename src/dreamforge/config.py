"""Service configuration, read from `DF_*` environment variables (pydantic-settings)."""

from __future__ import annotations

import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dreamforge.engines.base import KNOWN_PROVIDERS
from dreamforge.webhooks.signing import valid_secret


class Settings(BaseSettings):
    """Every knob of one Dream Forge process; the topology follows from these values alone."""

    model_config = SettingsConfigDict(env_prefix="DF_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8001

    data_dir: Path = Path("./var")
    # Empty means the embedded default: SQLite in data_dir.
    db_url: str = ""
    # Set: jobs go to Celery workers over this Redis, and events fan out through its pub/sub.
    redis_url: str = ""
    # The Celery queue this API publishes to and this worker consumes (one queue per GPU class).
    queue: str = "gpu.default"
    models_root: Path | None = None

    # Set: artifacts live in this S3-compatible bucket (MinIO in Compose) instead of data_dir.
    minio_endpoint: str = ""
    minio_access_key: str = ""
    minio_secret_key: str = ""
    minio_bucket: str = "dreamforge"
    minio_region: str = "us-east-1"
    # The endpoint clients reach, when it differs from the one the services use (presigned URLs
    # carry the host they were signed for).
    minio_public_endpoint: str = ""
    # Tries per artifact upload before the item fails with `storage_unavailable`.
    storage_retry_attempts: int = Field(default=5, ge=1, le=20)

    # Lifetime of artifact URLs (local signed URLs and S3 presigned URLs).
    artifact_url_ttl_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    # Secret for local artifact URL signatures; generated once into data_dir when unset.
    signing_secret: str = ""

    # A job interrupted by a crash is run again at most this many times in total.
    max_attempts: int = Field(default=3, ge=1, le=20)
    # A running job whose worker has not renewed its lease for this long is taken to be abandoned.
    lease_seconds: float = Field(default=30.0, ge=1)
    # How often the API re-queues abandoned jobs and re-sends jobs the broker never received.
    recovery_interval_seconds: float = Field(default=5.0, gt=0)
    # Finished jobs (succeeded, failed, canceled) are deleted with their events and artifacts (rows and
    # stored bytes) this many days after they finished; 0 keeps them forever. API processes sweep.
    retention_days: float = Field(default=0.0, ge=0)
    # How often an API process sweeps for expired jobs when `retention_days` is set.
    retention_sweep_seconds: float = Field(default=3600.0, gt=0)
    # A job still running after this long fails with `time_limit_exceeded`. The broker's visibility
    # timeout is derived from it, so a healthy long job is never redelivered while it runs.
    job_time_limit_seconds: int = Field(default=3600, ge=10)
    # Caps on what one job may ask for, checked when a job is created (422 `limit_exceeded`).
    # width*height*count in megapixels (10^6 pixels); 0 = no cap. The default, 100 x 1024x1024,
    # lets the contract's largest batch through at SDXL's native size.
    max_megapixels_per_job: float = Field(default=104.8576, ge=0)
    # The contract's own maximum is 200; an operator may lower it.
    max_steps: int = Field(default=200, ge=1, le=200)
    # Jobs in status `queued` across the service; a create beyond it is 429 `queue_full`. 0 = no cap.
    max_queued_jobs: int = Field(default=1000, ge=0)
    # The model a job without `model_id` renders with (a registry name). Unset: an enabled model
    # named for the default provider (its name contains "epicrealism"), else the newest enabled one.
    default_model: str = ""

    # Model downloads. Hugging Face's endpoint and token are huggingface_hub's own `HF_ENDPOINT` and
    # `HF_TOKEN` (or a stored `hf auth login`), read by that library.
    civitai_endpoint: str = "https://civitai.com"
    # Sent only to the Civitai host, never along a redirect to another host.
    civitai_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("CIVITAI_TOKEN", "DF_CIVITAI_TOKEN")
    )
    # Where a single-file SDXL checkpoint's small config and tokenizer files come from, fetched at
    # download time so that loading never reaches a hub.
    sdxl_config_repo: str = "stabilityai/stable-diffusion-xl-base-1.0"
    # Tries per file before a download gives up; each try resumes where the last one stopped.
    download_attempts: int = Field(default=5, ge=1, le=50)

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    # Trade speed for VRAM on small GPUs (diffusers' model CPU offload).
    cpu_offload: bool = False
    # Most images one pipeline call renders; unset: 8 on CPU, 4 elsewhere (see `batch_limit`). A
    # batched item is only visually (not bit-) identical to its solo render; 1 gives exact solo
    # reproducibility.
    max_batch: int | None = Field(default=None, ge=1, le=64)
    # CPU renders: torch's threads per render; 0 leaves one core free for serving (at least one
    # thread). On the 2-core benchmark VMs one thread rendered the tiny model 1.6-3x faster than two
    # (alternating in one process), the second thread's wake-ups costing more than it computes.
    cpu_threads: int = Field(default=0, ge=0, le=1024)
    # CUDA only: compile the UNet once per loaded model (slow first render, faster steps after).
    compile: bool = False
    # CUDA only: a diffusers AutoencoderKL folder to use instead of the checkpoint's VAE; an fp16-safe
    # SDXL VAE then decodes in half precision instead of SDXL's fp32 upcast.
    vae_model: str = ""
    # CUDA only: above this many megapixels per image the VAE decodes in tiles (less VRAM, slower).
    vae_tiling_megapixels: float = Field(default=4.2, gt=0)
    # Upscaler input tile side in pixels: larger images are upscaled in overlapping tiles of this size,
    # so a 4x model's activations stay within VRAM. 0 never tiles.
    upscale_tile: int = Field(default=512, ge=0, le=4096)
    # Restart a Celery worker process after this many jobs (0: never), for long-running GPU boxes.
    worker_max_jobs: int = Field(default=0, ge=0)
    # Port of a Celery worker's own Prometheus `/metrics` listener (0: none). API processes serve
    # `/metrics` on their own port instead.
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    # Process log lines: `text` for people, `json` (one object per line) for log shippers.
    log_format: Literal["text", "json"] = "text"

    # `required`: every /v1 request but artifact downloads needs an API key (`dreamforge apikey create`),
    # and a job is visible to its own key alone. `off` (the seed's local dev mode): anyone sees everything.
    auth: Literal["off", "required"] = "off"
    # Request size bounds: a job request is a few KB, so these only stop abuse (413 / 431).
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    # Per-key quota defaults (a key may set its own); 0 means no cap.
    quota_active_jobs: int = Field(default=100, ge=0)
    quota_images_per_day: int = Field(default=10_000, ge=0)
    # Seconds between SSE keep-alive comments while a job is idle.
    sse_ping_seconds: float = Field(default=15.0, gt=0)
    # Open progress streams this API process serves in all, and for one job; beyond, 429 too_many_streams.
    # Streams of a job share one database read per batch of events, so these bound memory and sockets.
    sse_max_streams: int = Field(default=2000, ge=1)
    sse_max_streams_per_job: int = Field(default=1000, ge=1)
    # Per API key and process (DF_AUTH=required): one client cannot hold every stream slot.
    sse_max_streams_per_key: int = Field(default=100, ge=1)

    # Providers jobs may name (`provider`), comma-separated: the local SDXL one and, opted into, remote
    # ones (`openai-images`). Remote providers' models appear in /models as `kind: remote-api`.
    providers: str = "local-sdxl-epicrealism"
    # The OpenAI Images API, or any server that speaks it (bring your own key: the service's, not the
    # caller's). The key is sent to this base URL only and never stored, logged or shown.
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "DF_OPENAI_API_KEY")
    )
    # The models offered (comma-separated); sizes and counts follow each model's documented limits.
    openai_models: str = "gpt-image-1"
    # One request's limit (gpt-image-1 may take a minute for several large images).
    openai_timeout_seconds: float = Field(default=180.0, gt=0, le=3600)
    # Tries per request on 429, 5xx and connection errors (with backoff, honouring Retry-After).
    openai_max_attempts: int = Field(default=6, ge=1, le=20)
    # Distributed: the Celery queue of remote-provider jobs, served by `dreamforge worker --queue
    # remote.default` (no GPU, no torch). Embedded: remote jobs run on threads of their own.
    remote_queue: str = "remote.default"
    # Remote jobs one process runs at once (threads); they wait on the network, not on a GPU.
    remote_concurrency: int = Field(default=4, ge=1, le=64)

    # Webhooks (a job's `webhook` URL). The signing secret (`whsec_...`) of jobs made without an API key;
    # unset, one is derived from the signing secret (`dreamforge webhook-secret` prints it). With
    # DF_AUTH=required each API key has its own, shown once by `dreamforge apikey create`.
    webhook_secret: SecretStr | None = None
    # Hosts a webhook may name although plain `http` or a loopback/private address (local development),
    # comma-separated hostnames or IP addresses, e.g. `localhost,127.0.0.1`.
    webhook_allow_hosts: str = ""
    # Seconds from one failed attempt to the next (each with +-10% jitter); after the last, the delivery
    # is `failed`. The default is Standard Webhooks' (Svix's) schedule: 8 attempts over about 27 hours.
    webhook_retry_schedule: list[float] = Field(
        default=[5, 300, 1800, 7200, 18000, 36000, 36000], max_length=50
    )
    webhook_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # The whole answer (status, headers, up to 64 KiB of body, which is discarded) must come in this long.
    webhook_read_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # Deliveries in flight at once per delivering process (threads); one hanging receiver holds one.
    webhook_concurrency: int = Field(default=8, ge=1, le=256)
    # The Celery queue of webhook deliveries (distributed); `dreamforge worker --queue webhooks` serves it.
    webhook_queue: str = "webhooks"
    # The API's address as clients reach it: the base of local artifact URLs in webhook bodies (requests
    # use their own Host). Unset: http://DF_HOST:DF_PORT.
    public_url: str = ""

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: str) -> str:
        names = [p.strip() for p in value.split(",") if p.strip()]
        unknown = sorted(set(names) - KNOWN_PROVIDERS)
        if unknown:
            raise ValueError(f"unknown providers {unknown}; known: {sorted(KNOWN_PROVIDERS)}")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not valid_secret(value.get_secret_value()):
            raise ValueError("must be `whsec_` followed by base64 of at least 24 random bytes")
        return value

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL: `DF_DB_URL`, or SQLite inside the data directory."""
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.data_dir / 'dreamforge.db').resolve()}"

    def batch_limit(self, device: str | None) -> int:
        """Most images per engine call on `device` (None: a remote provider): `DF_MAX_BATCH` if set.

        Unset, 8 on CPU: bench/batch_gain.py measured 8 per call fastest there in every run (the
        default of 4 reached 0.53-0.69 of its images/s). GPUs and remote providers keep 4: SDXL at
        1024 px gains less per extra image on a GPU while each adds activation memory.
        """
        if self.max_batch is not None:
            return self.max_batch
        return 8 if device == "cpu" else 4

    @property
    def distributed(self) -> bool:
        """True when jobs go through Celery on Redis rather than the in-process worker."""
        return bool(self.redis_url)

    @property
    def visibility_timeout_seconds(self) -> int:
        """How long the broker waits for an ack before redelivering: longer than any job may run."""
        return self.job_time_limit_seconds + 600

    @property
    def models_dir(self) -> Path:
        """Where installed models live (`DF_MODELS_ROOT`, default `<data_dir>/models`)."""
        return self.models_root if self.models_root is not None else self.data_dir / "models"

    @property
    def artifacts_dir(self) -> Path:
        """Root of the local artifact store."""
        return self.data_dir / "artifacts"

    @cached_property
    def url_signing_key(self) -> bytes:
        """The HMAC key for local artifact URLs, persisted so URLs survive a restart."""
        if self.signing_secret:
            return self.signing_secret.encode()
        path = self.data_dir / ".signing-key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip().encode()

    @property
    def enabled_providers(self) -> list[str]:
        """The providers `DF_PROVIDERS` names, in its order."""
        return [p.strip() for p in self.providers.split(",") if p.strip()]

    @property
    def public_base_url(self) -> str:
        """The API's base URL as clients reach it (local artifact URLs outside a request)."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def ensure_dirs(self) -> None:
        """Create the data, models and artifacts directories."""
        for d in (self.data_dir, self.models_dir, self.artifacts_dir):
            d.mkdir(parents=True, exist_ok=True)
