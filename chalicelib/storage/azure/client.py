"""The Azure SDK side of the driver: one client per process, and SAS signing.

The SDK (azure-storage-blob, and azure-identity for Entra credentials) is imported
here and only when a driver first talks to storage, so a function that never
touches Azure pays nothing for it. Clients are kept per process, keyed by the
parameters that shape them, so every driver and every invocation a warm worker
serves reuses one connection pool; a fork (gunicorn after preloading) starts a
new one, since a pool must not be shared across processes.
"""
from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from .parameters import AzureParameters

MiB = 1 << 20
# Reads stream in 4 MiB pieces (the SDK would fetch 32 MiB before returning the
# first byte); put_content stays one atomic Put Blob up to 256 MiB.
_CLIENT_OPTIONS = {
    "max_single_get_size": 4 * MiB,
    "max_chunk_get_size": 4 * MiB,
    "max_single_put_size": 256 * MiB,
    "max_block_size": 100 * MiB,
}
# A user delegation key may live 7 days; we ask for 2 and renew when less than the
# longest SAS plus a margin remains, as the reference registry does.
_DELEGATION_KEY_LIFETIME = timedelta(hours=48)
_DELEGATION_KEY_MARGIN = timedelta(minutes=30)

_lock = threading.Lock()
_clients: dict[tuple, tuple[int, Any]] = {}


def service_client(params: AzureParameters) -> Any:
    """The process's BlobServiceClient for these parameters, created on first use."""
    key = params.client_key()
    pid = os.getpid()
    with _lock:
        cached = _clients.get(key)
        if cached is not None and cached[0] == pid:
            return cached[1]
        client = _new_service_client(params)
        _clients[key] = (pid, client)
        return client


def _new_service_client(params: AzureParameters) -> Any:
    from azure.storage.blob import BlobServiceClient

    # The SDK logs every request and response at INFO; that belongs in debug logs only.
    http_log = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
    if http_log.level == logging.NOTSET and not logging.getLogger().isEnabledFor(logging.DEBUG):
        http_log.setLevel(logging.WARNING)

    options: dict[str, Any] = {
        **_CLIENT_OPTIONS,
        "retry_total": params.max_retries,
        "retry_backoff_factor": params.retry_delay,
        "retry_backoff_max": params.max_retry_delay,
    }
    if params.connection_string:
        client = BlobServiceClient.from_connection_string(params.connection_string, **options)
        if params.service_url:
            client = BlobServiceClient(params.service_url, credential=client.credential, **options)
        return client
    assert params.service_url is not None  # parse_parameters derives one when no connection string names it
    return BlobServiceClient(params.service_url, credential=_credential(params), **options)


def _credential(params: AzureParameters) -> Any:
    creds = params.credentials
    if params.account_key and creds.type == "shared_key":
        return {"account_name": params.account_name, "account_key": params.account_key}
    import azure.identity as identity  # only deployments on Entra credentials load it

    if creds.type == "client_secret":
        # parse_parameters refuses a client_secret credential without any of the three
        assert creds.tenant_id is not None and creds.client_id is not None and creds.secret is not None
        return identity.ClientSecretCredential(creds.tenant_id, creds.client_id, creds.secret)
    if creds.type == "managed_identity":
        return identity.ManagedIdentityCredential(client_id=creds.client_id)
    # Managed identity inside Azure, environment or developer logins elsewhere.
    return identity.DefaultAzureCredential(managed_identity_client_id=creds.client_id)


class Signer:
    """Makes SAS URLs for one blob (read-only, or write-only for direct parts): account-key SAS when we hold the key, else a
    user-delegation SAS signed with a key the service issues to our Entra identity."""

    def __init__(self, params: AzureParameters, service: Any):
        self._params = params
        self._service = service
        self._account_name, self._account_key = _shared_key(service)
        self._delegation_key: Any = None
        self._delegation_expiry = datetime.min.replace(tzinfo=timezone.utc)
        self._lock = threading.Lock()

    def _uses_token(self) -> bool:
        return hasattr(self._service.credential, "get_token")

    def blob_url(self, container: str, blob_name: str, expiry_seconds: int, write: bool = False) -> Optional[str]:
        """A URL for the blob valid for expiry_seconds, or None when we cannot sign: read-only,
        or with write, write-only (Put Block and friends on that blob, nothing else)."""
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        now = datetime.now(timezone.utc)
        expiry = now + timedelta(seconds=expiry_seconds)
        # No start time: a SAS valid "from now" must not be refused by a service
        # whose clock runs a little behind ours.
        signing: dict[str, Any] = {}
        if self._account_key is not None:
            signing["account_key"] = self._account_key
        elif self._uses_token():
            signing["user_delegation_key"] = self._user_delegation_key(now, expiry)
        else:
            return None
        blob = self._service.get_blob_client(container, blob_name)
        protocol = "https" if blob.url.startswith("https://") else None
        token = generate_blob_sas(
            account_name=self._account_name or blob.account_name,
            container_name=container,
            blob_name=blob_name,
            permission=BlobSasPermissions(write=True) if write else BlobSasPermissions(read=True),
            expiry=expiry,
            protocol=protocol,
            **signing,
        )
        return f"{blob.url}?{token}"

    def _user_delegation_key(self, now: datetime, sas_expiry: datetime) -> Any:
        with self._lock:
            if self._delegation_key is None or self._delegation_expiry - _DELEGATION_KEY_MARGIN < sas_expiry:
                start = now - timedelta(minutes=5)
                expiry = max(now + _DELEGATION_KEY_LIFETIME, sas_expiry + _DELEGATION_KEY_MARGIN)
                self._delegation_key = self._service.get_user_delegation_key(start, expiry)
                self._delegation_expiry = expiry
            return self._delegation_key


def _shared_key(service: Any) -> tuple[Optional[str], Optional[str]]:
    credential = service.credential
    name = getattr(credential, "account_name", None)
    key = getattr(credential, "account_key", None)
    return name, key
