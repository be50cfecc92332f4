"""A real S3 endpoint on loopback: `moto_server` in its own process, stopped by pid.

moto in server mode speaks the S3 REST API over HTTP like any S3-compatible store
(it does not check signatures, so presigned URLs are followed but not verified).
"""
from __future__ import annotations

import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from .servers import free_port, process

ACCESS_KEY = "stratus-test"
SECRET_KEY = "stratus-test-secret"
REGION = "us-east-1"
_clients: dict[tuple[str, str], Any] = {}


@dataclass(frozen=True)
class MotoS3:
    endpoint: str

    def client(self, service: str = "s3") -> Any:
        """A plain boto3 client of the endpoint (one per service: building one takes a while)."""
        key = (self.endpoint, service)
        if key not in _clients:
            import boto3

            _clients[key] = boto3.session.Session().client(
                service, endpoint_url=self.endpoint, region_name=REGION,
                aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            )
        return _clients[key]

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"stratus-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def parameters(self, bucket: str, **extra: Any) -> dict[str, Any]:
        """storage.s3 parameters for this endpoint, as a config.yml would give them."""
        return {
            "bucket": bucket, "region": REGION, "regionendpoint": self.endpoint,
            "accesskey": ACCESS_KEY, "secretkey": SECRET_KEY, "forcepathstyle": True, **extra,
        }

    def environment(self, bucket: str, **extra: str) -> dict[str, str]:
        """The same as REGISTRY_* variables, for a `stratus serve` or `chalice local` process."""
        return {
            "REGISTRY_STORAGE": "s3",
            "REGISTRY_STORAGE_S3_BUCKET": bucket,
            "REGISTRY_STORAGE_S3_REGION": REGION,
            "REGISTRY_STORAGE_S3_REGIONENDPOINT": self.endpoint,
            "REGISTRY_STORAGE_S3_ACCESSKEY": ACCESS_KEY,
            "REGISTRY_STORAGE_S3_SECRETKEY": SECRET_KEY,
            "REGISTRY_STORAGE_S3_FORCEPATHSTYLE": "true",
            **extra,
        }


    @contextmanager
    def lambda_function(self, monkeypatch: pytest.MonkeyPatch, bucket: str, **extra: str) -> Iterator[dict[str, str]]:
        """This process as a deployed function storing in bucket: the caller's REGISTRY_*,
        X-Ray and secret-parameter variables cleared, app.py's registry built afresh."""
        from chalicelib.aws_runtime import SECRET_PARAMETER_ENV, TRACE_HEADER_ENV

        for name in list(os.environ):
            if name.startswith("REGISTRY_") or name in (TRACE_HEADER_ENV, "AWS_XRAY_DAEMON_ADDRESS",
                                                       SECRET_PARAMETER_ENV):
                monkeypatch.delenv(name)
        env = {**self.environment(bucket), "AWS_LAMBDA_FUNCTION_NAME": "stratus-dev", **extra}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        import app

        app.RegistryChalice._owner = None
        try:
            yield env
        finally:
            app.RegistryChalice._owner = None


def moto_server_command() -> list[str]:
    local = Path(sys.executable).with_name("moto_server")
    if local.exists():
        return [str(local)]
    found = shutil.which("moto_server")
    if found:
        return [found]
    return [sys.executable, "-m", "moto.server"]


@contextmanager
def moto_s3_server(log: Path) -> Iterator[MotoS3]:
    """moto_server on a free loopback port until the block ends, its output in log."""
    port = free_port()
    with process([*moto_server_command(), "-H", "127.0.0.1", "-p", str(port)], port, log_path=log):
        yield MotoS3(f"http://127.0.0.1:{port}")


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as s3:
        yield s3
