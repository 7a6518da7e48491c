"""Test support: a real S3 HTTP endpoint on loopback (moto's threaded server) for the S3 artifact store.

The server runs in this process and keeps its buckets in moto's global in-memory backend, shared by
every test (and by any `mock_aws` in the same process). It needs no AWS_* variables: it accepts any
credentials and does not check signatures. Tests share one server and keep apart by bucket name;
`reset()` wipes everything if a test ever needs a blank slate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import boto3
import httpx
from botocore.config import Config
from moto.server import ThreadedMotoServer


@dataclass
class MotoS3:
    """moto's S3 server on 127.0.0.1; `port=0` picks a free port when started (no bind race)."""

    port: int = 0
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"
    _server: ThreadedMotoServer | None = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("MotoS3.start() first")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self.port = server.get_host_and_port()[1]
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def reset(self) -> None:
        """Drop every bucket and object (moto's reset API)."""
        httpx.post(f"{self.endpoint}/moto-api/reset", timeout=5).raise_for_status()

    def client(self) -> Any:
        """A plain boto3 S3 client on this server, for looking behind the store's back."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The keys stored in `bucket` under `prefix`, sorted."""
        listed = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def env(self, bucket: str) -> dict[str, str]:
        """The DF_MINIO_* variables pointing a `dreamforge` subprocess at this server and `bucket`."""
        return {
            "DF_MINIO_ENDPOINT": self.endpoint,
            "DF_MINIO_ACCESS_KEY": self.access_key,
            "DF_MINIO_SECRET_KEY": self.secret_key,
            "DF_MINIO_BUCKET": bucket,
            "DF_MINIO_REGION": self.region,
        }
