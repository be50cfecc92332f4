"""AWS Signature Version 4, as AWS documents it: header auth and (S3) presigned URLs.

The S3 read path (storage/s3/light.py) signs its own GET, HEAD and ListObjectsV2
requests with this, and aws_secrets.py its SSM and Secrets Manager reads, so a cold
instance serving a pull never imports botocore. It lives outside the storage package
so that signing imports nothing but the standard library. The algorithm (AWS S3 API
reference, "Authenticating Requests (AWS Signature Version 4)"):

    CanonicalRequest = Method \\n CanonicalURI \\n CanonicalQuery \\n CanonicalHeaders \\n
                       SignedHeaders \\n HashedPayload
    StringToSign     = "AWS4-HMAC-SHA256" \\n <amz date> \\n <date>/<region>/s3/aws4_request \\n
                       hex(sha256(CanonicalRequest))
    SigningKey       = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, <date>), region), "s3"), "aws4_request")
    Signature        = hex(HMAC(SigningKey, StringToSign))

with "s3" replaced by the service's signing name (`service`; "ssm", "secretsmanager").
S3 differs from other services in ways kept here: the URI path is encoded once, not
normalized nor encoded twice (other services' requests here go to "/", where both
agree), S3 wants the payload hash in an x-amz-content-sha256 header as well (others
do not, and botocore sends none to them), and a presigned URL signs the constant
UNSIGNED-PAYLOAD in place of the payload hash.
"""
from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Iterable, NamedTuple, Optional
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


class Credentials(NamedTuple):
    access_key: str
    secret_key: str
    token: Optional[str] = None


def uri_encode(text: str) -> str:
    """UriEncode of a query name or value: UTF-8, every byte but A-Z a-z 0-9 - _ . ~ as %XX."""
    return quote(text, safe="-_.~")


def encode_path(path: str) -> str:
    """An object key's URI path: as uri_encode, but "/" separates segments and stays."""
    return quote(path, safe="/-_.~")


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """Names and values encoded, then sorted by name (and value): also a valid query to send."""
    return "&".join(f"{k}={v}" for k, v in sorted((uri_encode(k), uri_encode(v)) for k, v in params))


def amz_date(moment: datetime) -> str:
    """ISO 8601 basic format in UTC, as X-Amz-Date carries it; moment must be in UTC."""
    return moment.strftime("%Y%m%dT%H%M%SZ")


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def _scope(timestamp: str, region: str, service: str = SERVICE) -> str:
    return f"{timestamp[:8]}/{region}/{service}/aws4_request"


def _signature(secret_key: str, timestamp: str, region: str, canonical_request: str,
               service: str = SERVICE) -> str:
    string_to_sign = "\n".join((
        ALGORITHM, timestamp, _scope(timestamp, region, service),
        hashlib.sha256(canonical_request.encode("utf-8")).hexdigest(),
    ))
    key = _hmac(("AWS4" + secret_key).encode("utf-8"), timestamp[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def _canonical_headers(headers: dict[str, str]) -> tuple[str, str]:
    """(CanonicalHeaders, SignedHeaders): names lower-cased and sorted, values trimmed
    with inner runs of spaces folded to one."""
    folded = sorted((name.lower(), " ".join(value.split())) for name, value in headers.items())
    return "".join(f"{n}:{v}\n" for n, v in folded), ";".join(n for n, _ in folded)


def sign_headers(method: str, host: str, path: str, query: str, headers: dict[str, str],
                 credentials: Credentials, region: str, now: datetime, service: str = SERVICE,
                 body: bytes = b"") -> dict[str, str]:
    """The headers to send with a request (those given, all of them signed, plus host, the
    date, for S3 the payload hash, session token and Authorization): sent as they are, the
    request carries the Host that was signed. path is already encoded (encode_path), query
    is canonical (canonical_query); body is the payload the request carries."""
    timestamp = amz_date(now)
    payload_hash = hashlib.sha256(body).hexdigest()
    signed = {**headers, "host": host, "x-amz-date": timestamp}
    if service == SERVICE:
        signed["x-amz-content-sha256"] = payload_hash
    if credentials.token:
        signed["x-amz-security-token"] = credentials.token
    canonical_headers, signed_names = _canonical_headers(signed)
    canonical_request = "\n".join((method, path, query, canonical_headers, signed_names, payload_hash))
    signature = _signature(credentials.secret_key, timestamp, region, canonical_request, service)
    scope = _scope(timestamp, region, service)
    signed["Authorization"] = (f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
                               f"SignedHeaders={signed_names}, Signature={signature}")
    return signed


def presign(method: str, host: str, path: str, credentials: Credentials, region: str,
            now: datetime, expires: int) -> str:
    """The path and query of a URL that performs method on path (encoded) at host until
    `expires` seconds after now. Only the Host header is signed, so the bearer may add
    others (Range)."""
    timestamp = amz_date(now)
    # the order of the URL's parameters is free; this one is the SDKs'
    auth = [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{credentials.access_key}/{_scope(timestamp, region)}"),
        ("X-Amz-Date", timestamp),
        ("X-Amz-Expires", str(int(expires))),
        ("X-Amz-SignedHeaders", "host"),
    ]
    if credentials.token:
        auth.append(("X-Amz-Security-Token", credentials.token))
    canonical_request = "\n".join((method, path, canonical_query(auth), f"host:{host}\n", "host", UNSIGNED_PAYLOAD))
    signature = _signature(credentials.secret_key, timestamp, region, canonical_request)
    query = "&".join(f"{uri_encode(k)}={uri_encode(v)}" for k, v in auth)
    return f"{path}?{query}&X-Amz-Signature={signature}"
