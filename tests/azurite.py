"""Azurite, the Azure Storage emulator, started for tests the way a developer would.

``azurite_blob()`` runs ``azurite-blob`` from node_modules (package.json pins it;
``npm ci`` installs it) on a free loopback port with a throw-away workspace and
stops it by pid. The session fixture ``azurite`` is one such emulator shared by
every test module; ``start_azurite`` makes a fixture of another (OAuth, say).
"""
from __future__ import annotations

import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from .components import require
from .servers import ROOT, free_port, process

# Azurite's well-known development account (documented, not a secret).
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_BLOB = ROOT / "node_modules" / ".bin" / "azurite-blob"


@dataclass(frozen=True)
class Azurite:
    port: int
    workspace: Path
    certificate: Optional[Path] = None  # set when serving HTTPS with OAuth

    @property
    def blob_endpoint(self) -> str:
        scheme = "https" if self.certificate else "http"
        return f"{scheme}://127.0.0.1:{self.port}/{ACCOUNT_NAME}"

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

    def environment(self, container: str, **extra: str) -> dict[str, str]:
        """The same as REGISTRY_* variables, for a `stratus serve` or function app process."""
        return {
            "REGISTRY_STORAGE": "azure",
            "REGISTRY_STORAGE_AZURE_ACCOUNTNAME": ACCOUNT_NAME,
            "REGISTRY_STORAGE_AZURE_ACCOUNTKEY": ACCOUNT_KEY,
            "REGISTRY_STORAGE_AZURE_SERVICEURL": self.blob_endpoint,
            "REGISTRY_STORAGE_AZURE_CONTAINER": container,
            **extra,
        }


@contextmanager
def azurite_blob(workspace: Path, oauth: bool = False) -> Iterator[Azurite]:
    """Azurite on loopback; with oauth, over HTTPS (a throw-away certificate) taking
    Entra ID bearer tokens, as Azurite's OAuth mode requires."""
    port = free_port()
    argv = [
        str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", str(port),
        "--location", str(workspace), "--skipApiVersionCheck", "--disableTelemetry", "--loose", "--silent",
    ]
    certificate = None
    if oauth:
        certificate, key = _self_signed_certificate(workspace.parent)
        argv += ["--oauth", "basic", "--cert", str(certificate), "--key", str(key)]
    with process(argv, port, log_path=workspace.parent / f"azurite-{port}.log", timeout=60):
        yield Azurite(port, workspace, certificate)


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "azurite-cert.pem", directory / "azurite-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ))
    return cert_path, key_path


class FakeEntraCredential:
    """A TokenCredential handing out unsigned-looking Entra ID tokens, which Azurite's
    basic OAuth mode checks for audience, issuer and lifetime only."""

    TENANT = "ab1f708d-50f6-404c-a006-d71b2ac7a606"
    OBJECT_ID = "2f1e4c7a-0000-4000-8000-5747a7a75001"

    def __init__(self) -> None:
        self.tokens_issued = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        import jwt
        from azure.core.credentials import AccessToken

        now = int(time.time())
        claims = {
            "aud": "https://storage.azure.com", "iss": f"https://sts.windows.net/{self.TENANT}/",
            "iat": now - 60, "nbf": now - 60, "exp": now + 3600, "oid": self.OBJECT_ID, "tid": self.TENANT,
        }
        self.tokens_issued += 1
        token = jwt.encode(claims, "azurite-does-not-check-signatures-0123456789", "HS256")
        return AccessToken(token, now + 3600)

    def get_token_info(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessTokenInfo

        token = self.get_token(*scopes)
        return AccessTokenInfo(token.token, token.expires_on)


NO_AZURITE = "Azurite is not installed (npm ci installs it; see package.json)"


def available() -> bool:
    return AZURITE_BLOB.exists() and shutil.which("node") is not None


def start_azurite(tmp_path_factory: pytest.TempPathFactory, oauth: bool = False) -> Iterator[Azurite]:
    """Body of a fixture: `yield from start_azurite(tmp_path_factory)`."""
    require("Azurite", None if available() else NO_AZURITE)
    workspace = tmp_path_factory.mktemp("azurite-oauth" if oauth else "azurite") / "data"
    workspace.mkdir()
    with azurite_blob(workspace, oauth=oauth) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """One Azurite for the session (conftest.py makes it everyone's fixture); each test
    module works in containers of its own (`new_container()`)."""
    yield from start_azurite(tmp_path_factory)
