"""storage.s3 parameters, named and defaulted as in the reference registry's s3-aws driver.

A config.yml written for registry:2 loads unchanged: every key the reference reads
is accepted (bucket, region, regionendpoint, accesskey, secretkey, sessiontoken,
rootdirectory, forcepathstyle, chunksize, encrypt, keyid, secure, skipverify,
v4auth, storageclass, objectacl, useragent, usedualstack, accelerate,
usefipsendpoint, multipartcopychunksize, multipartcopymaxconcurrency,
multipartcopythresholdsize, loglevel). Values may be YAML-typed or strings (as
REGISTRY_STORAGE_S3_* variables are), and a bad one is reported with its key path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ...durations import parse_size
from ..params import boolean

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

MIN_PART_SIZE = 5 * MiB  # S3: every part but the last is at least this long
MAX_PART_SIZE = 5 * GiB  # S3: no part (nor single-request copy) is longer
DEFAULT_CHUNK_SIZE = 2 * MIN_PART_SIZE
DEFAULT_COPY_CHUNK_SIZE = 32 * MiB
DEFAULT_COPY_MAX_CONCURRENCY = 100
DEFAULT_COPY_THRESHOLD = 32 * MiB

STORAGE_CLASSES = (
    "NONE", "STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA",
    "INTELLIGENT_TIERING", "OUTPOSTS", "GLACIER_IR", "EXPRESS_ONEZONE",
)
OBJECT_ACLS = (
    "private", "public-read", "public-read-write", "authenticated-read",
    "aws-exec-read", "bucket-owner-read", "bucket-owner-full-control",
)
LOG_LEVELS = (
    "off", "debug", "debugwithsigning", "debugwithhttpbody", "debugwithrequestretries",
    "debugwithrequesterrors", "debugwitheventstreambody",
)
KNOWN = frozenset({
    "bucket", "region", "regionendpoint", "accesskey", "secretkey", "sessiontoken",
    "rootdirectory", "forcepathstyle", "chunksize", "encrypt", "keyid", "secure",
    "skipverify", "v4auth", "storageclass", "objectacl", "useragent", "usedualstack",
    "accelerate", "usefipsendpoint", "multipartcopychunksize", "multipartcopymaxconcurrency",
    "multipartcopythresholdsize", "loglevel",
})


@dataclass(frozen=True)
class ConnectionParameters:
    """What a boto3 client is built from; equal parameters share one client per process."""

    region: Optional[str]
    endpoint: Optional[str]
    access_key: Optional[str]
    secret_key: Optional[str]
    session_token: Optional[str]
    force_path_style: bool
    verify: bool
    v4auth: bool
    user_agent: Optional[str]
    dual_stack: bool
    accelerate: bool
    fips: bool
    max_pool_connections: int


@dataclass(frozen=True)
class S3Parameters:
    bucket: str
    connection: ConnectionParameters
    root_directory: str = ""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    encrypt: bool = False
    key_id: Optional[str] = None
    storage_class: Optional[str] = "STANDARD"  # None: send none (stores without classes)
    object_acl: Optional[str] = None  # None: send none (buckets with ACLs disabled)
    copy_chunk_size: int = DEFAULT_COPY_CHUNK_SIZE
    copy_max_concurrency: int = DEFAULT_COPY_MAX_CONCURRENCY
    copy_threshold: int = DEFAULT_COPY_THRESHOLD
    log_level: str = "off"

    @property
    def may_be_eventually_consistent(self) -> bool:
        """AWS S3 reads its writes; an S3-compatible store at another endpoint may not."""
        endpoint = self.connection.endpoint
        return bool(endpoint and "amazonaws.com" not in endpoint)


def _label(key: str) -> str:
    return f"storage.s3.{key}"


def _string(params: Mapping[str, Any], key: str, default: Optional[str] = None) -> Optional[str]:
    value = params.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, (dict, list, bool)):
        raise ValueError(f"{_label(key)}: expected a string, got {value!r}")
    return str(value)


def _int(params: Mapping[str, Any], key: str, default: int, minimum: int, maximum: int,
         size: bool = True) -> int:
    value = params.get(key)
    if value is None or value == "":
        return default
    try:
        number = parse_size(value) if size else _plain_int(value)
    except ValueError:
        kind = "a size in bytes" if size else "an integer"
        raise ValueError(f"{_label(key)}: expected {kind}, got {value!r}") from None
    if not minimum <= number <= maximum:
        raise ValueError(f"{_label(key)}: expected a number between {minimum} and {maximum}, got {number}")
    return number


def _plain_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("+").isdigit():
        return int(value)
    raise ValueError(value)


def _choice(params: Mapping[str, Any], key: str, choices: tuple[str, ...], default: Optional[str],
            fold=str.upper) -> Optional[str]:
    if params.get(key) is False and key == "loglevel":  # YAML reads `off` as false
        return "off"
    value = _string(params, key)
    if value is None:
        return default
    folded = fold(value)
    if folded not in choices:
        raise ValueError(f"{_label(key)}: expected one of {', '.join(choices)}, got {value!r}")
    return folded


def _endpoint(params: Mapping[str, Any], secure: bool) -> Optional[str]:
    endpoint = _string(params, "regionendpoint")
    if endpoint is None:
        return None
    endpoint = endpoint.rstrip("/")
    if "://" not in endpoint:
        endpoint = ("https://" if secure else "http://") + endpoint
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"{_label('regionendpoint')}: expected an http(s) URL or host, got {endpoint!r}")
    return endpoint


def parse_parameters(params: Mapping[str, Any]) -> S3Parameters:
    unknown = sorted(str(k) for k in params if k not in KNOWN)
    if unknown:
        raise ValueError(f"{_label(unknown[0])}: unknown parameter of the s3 driver")
    bucket = _string(params, "bucket")
    if not bucket:
        raise ValueError(f"{_label('bucket')}: required, the name of the S3 bucket")
    secure = boolean(params, "s3", "secure", True)
    endpoint = _endpoint(params, secure)
    region = _string(params, "region")
    if region is None and endpoint is None:
        # The Lambda runtime and most AWS hosts say where they are; the reference
        # insists on the key, we fall back to the standard environment first.
        import os

        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not region:
            raise ValueError(f"{_label('region')}: required unless regionendpoint is set (or AWS_REGION)")
    access_key, secret_key = _string(params, "accesskey"), _string(params, "secretkey")
    if bool(access_key) != bool(secret_key):
        raise ValueError(f"{_label('accesskey')}: accesskey and secretkey go together; set both or neither")
    concurrency = _int(params, "multipartcopymaxconcurrency", DEFAULT_COPY_MAX_CONCURRENCY, 1, 2**31, size=False)
    connection = ConnectionParameters(
        region=region or "us-east-1",
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        session_token=_string(params, "sessiontoken"),
        force_path_style=boolean(params, "s3", "forcepathstyle", False),
        verify=not boolean(params, "s3", "skipverify", False),
        v4auth=boolean(params, "s3", "v4auth", True),
        user_agent=_string(params, "useragent"),
        dual_stack=boolean(params, "s3", "usedualstack", False),
        accelerate=boolean(params, "s3", "accelerate", False),
        fips=boolean(params, "s3", "usefipsendpoint", False),
        # bounded: copies use at most this many threads, requests share the pool
        max_pool_connections=min(max(concurrency, 10), 32),
    )
    if not connection.v4auth and (endpoint is None or "s3.amazonaws.com" in endpoint):
        raise ValueError(f"{_label('v4auth')}: Amazon S3 accepts only v4 signatures")
    storage_class = _choice(params, "storageclass", STORAGE_CLASSES, "STANDARD")
    root = _string(params, "rootdirectory", "") or ""
    return S3Parameters(
        bucket=bucket,
        connection=connection,
        root_directory=root.strip("/"),
        chunk_size=_int(params, "chunksize", DEFAULT_CHUNK_SIZE, MIN_PART_SIZE, MAX_PART_SIZE),
        encrypt=boolean(params, "s3", "encrypt", False),
        key_id=_string(params, "keyid"),
        storage_class=None if storage_class == "NONE" else storage_class,
        object_acl=_choice(params, "objectacl", OBJECT_ACLS, None, fold=str.lower),
        copy_chunk_size=_int(params, "multipartcopychunksize", DEFAULT_COPY_CHUNK_SIZE, MIN_PART_SIZE, MAX_PART_SIZE),
        copy_max_concurrency=concurrency,
        copy_threshold=_int(params, "multipartcopythresholdsize", DEFAULT_COPY_THRESHOLD, 0, MAX_PART_SIZE),
        log_level=_choice(params, "loglevel", LOG_LEVELS, "off", fold=str.lower) or "off",
    )
