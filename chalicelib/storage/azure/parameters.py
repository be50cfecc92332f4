"""The azure driver's parameters, named as the reference registry names them.

``storage.azure``: ``accountname``, ``accountkey``, ``container``, ``realm``,
``rootdirectory``, ``serviceurl``, ``connectionstring``, ``credentials`` (``type``
shared_key | client_secret | default_credentials | managed_identity, with
``clientid``, ``tenantid``, ``secret``), ``max_retries``, ``retry_delay``,
``max_retry_delay``, ``copy_status_poll_max_retry``, ``copy_status_poll_delay``,
plus Stratus's ``legacyrootprefix``. Every bad value is a ValueError that starts
with its key path, like the rest of the configuration.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ...durations import parse_duration
from ..params import boolean

PREFIX = "storage.azure"
DEFAULT_REALM = "core.windows.net"
CREDENTIAL_TYPES = ("shared_key", "client_secret", "default_credentials", "managed_identity")

_KNOWN = {
    "accountname", "accountkey", "container", "realm", "rootdirectory", "serviceurl",
    "connectionstring", "credentials", "max_retries", "retry_delay", "max_retry_delay",
    "copy_status_poll_max_retry", "copy_status_poll_delay", "legacyrootprefix",
}
# https://learn.microsoft.com/rest/api/storageservices/naming-and-referencing-containers--blobs--and-metadata
_CONTAINER_RE = re.compile(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]\Z")
_ACCOUNT_RE = re.compile(r"[a-z0-9]{3,24}\Z")


@dataclass(frozen=True)
class Credentials:
    type: str
    client_id: Optional[str] = None
    tenant_id: Optional[str] = None
    secret: Optional[str] = None


@dataclass(frozen=True)
class AzureParameters:
    container: str
    account_name: Optional[str]
    account_key: Optional[str]
    service_url: Optional[str]  # None with a connection string, which names its own
    connection_string: Optional[str]
    credentials: Credentials
    root_directory: str = ""  # without leading or trailing "/"
    legacy_root_prefix: bool = False  # keys start with "/", as registry 2.x wrote them
    max_retries: int = 3
    retry_delay: float = 0.8  # seconds; the SDK's backoff factor
    max_retry_delay: float = 60.0
    copy_poll_max_retry: int = 30  # -1 or 0: a copy still pending fails at once
    copy_poll_delay: float = 0.1  # seconds, multiplied by the attempt number

    def client_key(self) -> tuple:
        """What makes two drivers share one SDK client in a process."""
        return (
            self.service_url, self.connection_string, self.account_name, self.account_key,
            self.credentials, self.max_retries, self.retry_delay, self.max_retry_delay,
        )


def _fail(key: str, expected: str, value: Any) -> ValueError:
    shown = "<hidden>" if key.endswith(("accountkey", "secret", "connectionstring")) else repr(value)
    return ValueError(f"{PREFIX}.{key}: expected {expected}, got {shown}")


def _string(params: Mapping[str, Any], key: str, *, label: Optional[str] = None) -> Optional[str]:
    value = params.get(key)
    if value is None or value == "":
        return None
    # Environment values are parsed as YAML, so a container named "123" arrives as 123.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise _fail(label or key, "a string", value)
    return value.strip()


def _integer(params: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    value = params.get(key, default)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(key, f"an integer of at least {minimum}", value)
    return value


def _duration(params: Mapping[str, Any], key: str, default: float) -> float:
    value = params.get(key)
    if value is None:
        return default
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{PREFIX}.{key}: {exc}") from None
    if seconds < 0:
        raise _fail(key, "a non-negative duration", value)
    return seconds


def _credentials(params: Mapping[str, Any], has_key: bool) -> Credentials:
    raw = params.get("credentials")
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise _fail("credentials", "a mapping with 'type'", raw)
    unknown = sorted(set(raw) - {"type", "clientid", "tenantid", "secret"})
    if unknown:
        raise ValueError(f"{PREFIX}.credentials.{unknown[0]}: unknown parameter")
    default = "shared_key" if has_key else "default_credentials"
    kind = _string(raw, "type", label="credentials.type") or default
    if kind not in CREDENTIAL_TYPES:
        raise _fail("credentials.type", "one of " + ", ".join(CREDENTIAL_TYPES), kind)
    creds = Credentials(
        type=kind,
        client_id=_string(raw, "clientid", label="credentials.clientid"),
        tenant_id=_string(raw, "tenantid", label="credentials.tenantid"),
        secret=_string(raw, "secret", label="credentials.secret"),
    )
    if kind == "client_secret":
        required = {"clientid": creds.client_id, "tenantid": creds.tenant_id, "secret": creds.secret}
        for key, value in required.items():
            if not value:
                raise ValueError(
                    f"{PREFIX}.credentials.{key}: required when credentials.type is client_secret"
                )
    if kind == "shared_key" and not has_key:
        raise ValueError(f"{PREFIX}.accountkey: required when credentials.type is shared_key")
    return creds


def parse_parameters(params: Mapping[str, Any]) -> AzureParameters:
    unknown = sorted(str(k) for k in params if k not in _KNOWN)
    if unknown:
        raise ValueError(
            f"{PREFIX}.{unknown[0]}: unknown parameter; the azure driver takes " + ", ".join(sorted(_KNOWN))
        )
    container = _string(params, "container")
    if not container:
        raise ValueError(f"{PREFIX}.container: required (the blob container that holds the registry)")
    if not _CONTAINER_RE.match(container):
        raise _fail("container", "a container name of 3-63 lower-case letters, digits and single hyphens",
                    container)
    connection_string = _string(params, "connectionstring")
    account_name = _string(params, "accountname")
    account_key = _string(params, "accountkey")
    if account_name is not None and not _ACCOUNT_RE.match(account_name):
        raise _fail("accountname", "a storage account name of 3-24 lower-case letters and digits",
                    account_name)
    if connection_string is None and account_name is None:
        raise ValueError(f"{PREFIX}.accountname: required unless connectionstring is given")
    realm = _string(params, "realm") or DEFAULT_REALM
    service_url = _string(params, "serviceurl")
    if service_url is not None and not re.match(r"https?://[^/\s]+", service_url):
        raise _fail("serviceurl", "an http(s) URL such as https://<account>.blob.core.windows.net",
                    service_url)
    if service_url is None and connection_string is None:
        service_url = f"https://{account_name}.blob.{realm}"
    root = _string(params, "rootdirectory") or ""
    root = root.strip("/")
    if root and any(part in ("", ".", "..") for part in root.split("/")):
        raise _fail("rootdirectory", "a key prefix of plain path components", params.get("rootdirectory"))
    return AzureParameters(
        container=container,
        account_name=account_name,
        account_key=account_key,
        service_url=service_url.rstrip("/") if service_url else None,
        connection_string=connection_string,
        credentials=_credentials(params, has_key=bool(account_key) or connection_string is not None),
        root_directory=root,
        legacy_root_prefix=boolean(params, "azure", "legacyrootprefix", False),
        max_retries=_integer(params, "max_retries", 3, 0),
        retry_delay=_duration(params, "retry_delay", 0.8),
        max_retry_delay=_duration(params, "max_retry_delay", 60.0),
        copy_poll_max_retry=_integer(params, "copy_status_poll_max_retry", 30, -1),
        copy_poll_delay=_duration(params, "copy_status_poll_delay", 0.1),
    )
