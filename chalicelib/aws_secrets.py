"""SSM GetParameter and Secrets Manager GetSecretValue without botocore.

aws_runtime.fetch_secret reads http.secret and the Redis AUTH token once per process.
Through boto3 that costs a cold instance ~150-250 ms (the imports, then a client built
from the service model) before, say, its first blob GET can ask Redis. Here the one
JSON request is signed by sigv4.py and POSTed over the standard library's http.client.

It is used only where it goes where, and as, the boto3 client's request would
(`endpoint` decides, else aws_runtime reads through boto3): static credentials in the
environment (aws_light), a region (AWS_REGION, else AWS_DEFAULT_REGION, as
aws_runtime hands boto3), nothing set that the client would honour otherwise, and the
endpoint botocore would pick: AWS_ENDPOINT_URL_<SERVICE>, else AWS_ENDPOINT_URL
(unless AWS_IGNORE_CONFIGURED_ENDPOINT_URLS is true), else the regional one.
"""
from __future__ import annotations

import base64
import json
import os
import time
from datetime import datetime, timezone
from typing import Mapping, NamedTuple, Optional
from urllib.parse import urlsplit

from . import aws_light, sigv4

# service (its signing name) -> operation's X-Amz-Target, botocore's endpoint variable
_TARGETS = {
    "ssm": ("AmazonSSM.GetParameter", "AWS_ENDPOINT_URL_SSM"),
    "secretsmanager": ("secretsmanager.GetSecretValue", "AWS_ENDPOINT_URL_SECRETS_MANAGER"),
}
# one read per process and name: a few quick attempts, not botocore's five
MAX_ATTEMPTS = 3


class SecretReadError(Exception):
    """The service refused (code: its error type, e.g. ParameterNotFound) or could not be reached."""

    def __init__(self, message: str, code: str = "", status: Optional[int] = None):
        super().__init__(message)
        self.code, self.status = code, status


class Endpoint(NamedTuple):
    service: str
    url: str
    region: str
    credentials: sigv4.Credentials


def endpoint(service: str, environ: Mapping[str, str] = os.environ) -> Optional[Endpoint]:
    """Where and as whom to read from service without boto3; None: boto3 must read it."""
    credentials = aws_light.static_credentials(environ)
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if credentials is None or not region or aws_light.client_configured(environ):
        return None
    url = None
    if environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() != "true":  # botocore's ensure_boolean
        url = environ.get(_TARGETS[service][1]) or environ.get("AWS_ENDPOINT_URL")
    if url is None:
        if not aws_light.AWS_REGION.match(region):
            return None  # another partition's endpoints: the client knows them
        url = f"https://{service}.{region}.amazonaws.com"
    parts = urlsplit(url)
    # the request goes to "/", so a configured URL with a path of its own is left to botocore
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
        return None
    return Endpoint(service, url, region, credentials)


def read(where: Endpoint, ident: str) -> str:
    """The parameter's value (decrypted) or the secret's (SecretString, else SecretBinary as
    UTF-8), as aws_runtime's boto3 read returns it; empty is the caller's to refuse."""
    if where.service == "ssm":
        return _call(where, {"Name": ident, "WithDecryption": True})["Parameter"]["Value"]
    found = _call(where, {"SecretId": ident})
    value = found.get("SecretString")
    if value is None:  # the JSON protocol carries blobs base64-encoded
        value = base64.b64decode(found["SecretBinary"]).decode("utf-8")
    return value


def _call(where: Endpoint, params: dict) -> dict:
    import http.client

    target = _TARGETS[where.service][0]
    operation = target.split(".", 1)[1]
    body = json.dumps(params).encode()
    parts = urlsplit(where.url)
    default_port = ":443" if parts.scheme == "https" else ":80"
    # the signed Host is the netloc without the scheme's default port, as http.client sends it
    host = parts.netloc[: -len(default_port)] if parts.netloc.endswith(default_port) else parts.netloc
    context = aws_light.tls_context() if parts.scheme == "https" else None
    for attempt in range(1, MAX_ATTEMPTS + 1):
        headers = sigv4.sign_headers(
            "POST", host, "/", "", {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target},
            where.credentials, where.region, datetime.now(timezone.utc), service=where.service, body=body)
        conn = (http.client.HTTPSConnection(parts.netloc, timeout=aws_light.CONNECT_TIMEOUT, context=context)
                if context else http.client.HTTPConnection(parts.netloc, timeout=aws_light.CONNECT_TIMEOUT))
        throttled = False
        try:
            conn.connect()
            conn.sock.settimeout(aws_light.READ_TIMEOUT)
            conn.request("POST", "/", body=body, headers=headers)
            response = conn.getresponse()
            status, data = response.status, response.read()
        except (http.client.HTTPException, OSError) as exc:  # timeouts, refusals, TLS: retried
            failure = SecretReadError(f"could not reach {where.url} for {operation}: {type(exc).__name__}: {exc}")
        else:
            if status == 200:
                return json.loads(data)
            failure = _error(status, data, operation)
            throttled = status == 429 or failure.code in aws_light.THROTTLING_CODES
            if not throttled and status < 500:
                raise failure
        finally:
            conn.close()
        if attempt < MAX_ATTEMPTS:
            time.sleep(aws_light.backoff(attempt, throttled))
    raise failure


def _error(status: int, data: bytes, operation: str) -> SecretReadError:
    """The JSON error as botocore reports it: __type (after any "namespace#") and message.
    The error body names the parameter or secret, never its value."""
    try:
        error = json.loads(data)
    except ValueError:
        error = {}
    if not isinstance(error, dict):
        error = {}
    code = str(error.get("__type") or status).rsplit("#", 1)[-1]
    message = error.get("message") or error.get("Message") or ""
    return SecretReadError(f"An error occurred ({code}) when calling the {operation} operation: {message}",
                           code, status)
