"""Azurite, the Azure Storage emulator, started for tests the way a developer would.

``azurite_blob()`` runs ``azurite-blob`` from node_modules (package.json pins it;
``npm ci`` installs it) on a free loopback port with a throw-away workspace and
stops it by pid. Test modules use the ``azurite`` fixture below; a module that
imports it gets one emulator for its whole session.
"""
from __future__ import annotations

import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from .servers import ROOT, free_port, process

# Azurite's well-known development account (documented, not a secret).
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_BLOB = ROOT / "node_modules" / ".bin" / "azurite-blob"


@dataclass(frozen=True)
class Azurite:
    port: int
    workspace: Path

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def service_client(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def new_container(self) -> str:
        name = f"stratus-{uuid.uuid4().hex[:12]}"
        self.service_client().create_container(name)
        return name

    def driver_parameters(self, container: str, **extra: Any) -> dict[str, Any]:
        """Parameters as a user would write them for Azurite: account, key, serviceurl."""
        return {
            "accountname": ACCOUNT_NAME,
            "accountkey": ACCOUNT_KEY,
            "serviceurl": self.blob_endpoint,
            "container": container,
            **extra,
        }


@contextmanager
def azurite_blob(workspace: Path) -> Iterator[Azurite]:
    port = free_port()
    argv = [
        str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", str(port),
        "--location", str(workspace), "--skipApiVersionCheck", "--disableTelemetry", "--loose", "--silent",
    ]
    with process(argv, port, log_path=workspace.parent / f"azurite-{port}.log", timeout=60):
        yield Azurite(port, workspace)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    if not AZURITE_BLOB.exists() or shutil.which("node") is None:
        pytest.skip("Azurite is not installed (npm ci installs it; see package.json)")
    workspace = tmp_path_factory.mktemp("azurite") / "data"
    workspace.mkdir()
    with azurite_blob(workspace) as emulator:
        yield emulator
