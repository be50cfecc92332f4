"""API Gateway proxy events shaped like the ones Lambda receives, and a way to invoke
the Chalice app with them in this process, as a fresh function instance would.

Tests that send HTTP go through tests/lambda_gateway.py, a real gateway process; this
in-process Invoker is for tests that must look inside the function's process
(threads, file descriptors, X-Ray). It enforces the same platform limits: an event
over 6,291,456 bytes is answered 413 without calling the handler, a result over
Lambda's response limit 502, so no test here passes where the platform would refuse.

The shapes follow recorded events: REST API (payload 1.0, a stage in the path,
single- and multi-value headers and query parameters) and HTTP API (payload 2.0,
lower-case comma-joined headers, rawPath/rawQueryString, the $default stage).
Binary bodies are base64-encoded, as API Gateway sends them when the API's
binary media types match (`*/*` in app.py).
"""
from __future__ import annotations

import base64
import hashlib
import importlib
import itertools
import json
import time
import uuid
from typing import Any, Iterable, Mapping, Optional, Sequence, Union
from urllib.parse import parse_qs, urlsplit

from .lambda_gateway import EVENT_LIMIT, INTERNAL, RESPONSE_LIMIT, TOO_LONG

DOMAIN = "abc123def4.execute-api.us-east-1.amazonaws.com"
REST_STAGE = "api"


def _b64(body: bytes) -> str:
    return base64.b64encode(body).decode("ascii")


def http_api_event(method: str, path: str, query: str = "", headers: Optional[Mapping[str, str]] = None,
                   body: bytes = b"", binary: bool = True) -> dict[str, Any]:
    """An HTTP API (payload format 2.0) event, as API Gateway sends it to Lambda."""
    hdrs = {"host": DOMAIN, "user-agent": "skopeo/1.13", "x-forwarded-proto": "https",
            "x-forwarded-for": "198.51.100.7", "x-forwarded-port": "443",
            "x-amzn-trace-id": "Root=1-65f1c2a0-0123456789abcdef01234567"}
    hdrs.update({k.lower(): v for k, v in (headers or {}).items()})
    if body:
        hdrs["content-length"] = str(len(body))
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "ANY /v2/{proxy+}" if path.startswith("/v2/") else "ANY /v2",
        "rawPath": path,
        "rawQueryString": query,
        "headers": hdrs,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": DOMAIN.split(".")[0],
            "domainName": DOMAIN,
            "domainPrefix": DOMAIN.split(".")[0],
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "198.51.100.7",
                     "userAgent": hdrs["user-agent"]},
            "requestId": uuid.uuid4().hex[:16] + "=",
            "routeKey": "ANY /v2/{proxy+}",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": binary and bool(body),
    }
    if query:
        event["queryStringParameters"] = {k: ",".join(v) for k, v in parse_qs(query, keep_blank_values=True).items()}
    if path.startswith("/v2/"):
        event["pathParameters"] = {"proxy": path[len("/v2/"):]}
    if body:
        event["body"] = _b64(body) if binary else body.decode("utf-8")
    return event


def rest_api_event(method: str, path: str, query: str = "", headers: Optional[Mapping[str, str]] = None,
                   body: bytes = b"", binary: bool = True) -> dict[str, Any]:
    """A REST API (payload format 1.0) proxy event for a stage named `api`."""
    hdrs = {"Host": DOMAIN, "User-Agent": "docker/24.0.7", "X-Forwarded-Proto": "https",
            "X-Forwarded-For": "198.51.100.7", "X-Forwarded-Port": "443",
            "X-Amzn-Trace-Id": "Root=1-65f1c2a0-0123456789abcdef01234567", "Accept": "*/*"}
    hdrs.update(headers or {})
    if body:
        hdrs["Content-Length"] = str(len(body))
    params = parse_qs(query, keep_blank_values=True) if query else None
    event: dict[str, Any] = {
        "resource": "/v2/{proxy+}" if path.startswith("/v2/") else "/v2",
        "path": path,
        "httpMethod": method,
        "headers": hdrs,
        "multiValueHeaders": {k: [v] for k, v in hdrs.items()},
        "queryStringParameters": {k: v[-1] for k, v in params.items()} if params else None,
        "multiValueQueryStringParameters": params,
        "pathParameters": {"proxy": path[len("/v2/"):]} if path.startswith("/v2/") else None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "a1b2c3",
            "resourcePath": "/v2/{proxy+}",
            "httpMethod": method,
            "extendedRequestId": "Kx1abCDEoAMF4Xw=",
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
            "path": f"/{REST_STAGE}{path}",
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "stage": REST_STAGE,
            "domainPrefix": DOMAIN.split(".")[0],
            "requestTimeEpoch": int(time.time() * 1000),
            "requestId": str(uuid.uuid4()),
            "identity": {"sourceIp": "198.51.100.7", "userAgent": hdrs["User-Agent"]},
            "domainName": DOMAIN,
            "apiId": DOMAIN.split(".")[0],
        },
        "body": (_b64(body) if binary else body.decode("utf-8")) if body else None,
        "isBase64Encoded": binary and bool(body),
    }
    return event


class LambdaContext:
    function_name = "stratus-dev"
    function_version = "$LATEST"
    memory_limit_in_mb = 1024
    aws_request_id = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


class Response:
    """A proxy-integration result read back the way API Gateway reads it."""

    def __init__(self, result: Mapping[str, Any]):
        self.raw = result
        self.status = result["statusCode"]
        headers: dict[str, str] = {}
        for name, value in (result.get("headers") or {}).items():
            headers[name.lower()] = value
        for name, values in (result.get("multiValueHeaders") or {}).items():
            headers[name.lower()] = ",".join(values)
        self.headers = headers
        body = result.get("body") or ""
        self.body = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())

    def location(self) -> tuple[str, str]:
        """The Location as (path without the stage prefix, query)."""
        parts = urlsplit(self.header("Location"))
        path = parts.path
        if path.startswith(f"/{REST_STAGE}/"):
            path = path[len(REST_STAGE) + 1:]
        return path, parts.query


class Invoker:
    """Invokes app.py's handler; fresh=True builds the app as a cold instance would."""

    def __init__(self, shape: str = "http"):
        self.event = http_api_event if shape == "http" else rest_api_event
        self.payload_v2 = shape == "http"

    def __call__(self, method: str, path: str, query: str = "", headers: Optional[Mapping[str, str]] = None,
                 body: bytes = b"", *, fresh: bool = True, binary: bool = True) -> Response:
        module = importlib.import_module("app")
        if fresh:
            module.RegistryChalice._owner = None  # no registry, cache or upload state carried over
        event = self.event(method, path, query, headers, body, binary)
        if len(json.dumps(event, separators=(",", ":")).encode()) > EVENT_LIMIT:
            return Response(_gateway_error(*TOO_LONG))  # Lambda refuses it: the handler never runs
        result = module.app(event, LambdaContext())
        assert isinstance(result, dict) and "statusCode" in result, result
        if self.payload_v2:
            assert "multiValueHeaders" not in result
        if len(json.dumps(result).encode()) > RESPONSE_LIMIT:
            return Response(_gateway_error(*INTERNAL))
        return Response(result)

    def push_blob(self, name: str, data: bytes, chunk: Union[int, Sequence[int]], fresh: bool = True) -> str:
        """POST, PATCH in chunks (of one size, or of the sizes given in turn), PUT: each
        request on a fresh instance unless fresh=False. Returns the digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        started = self("POST", f"/v2/{name}/blobs/uploads/", fresh=fresh)
        assert started.status == 202, started.body
        path, query = started.location()
        sizes = itertools.cycle([chunk] if isinstance(chunk, int) else chunk)
        offset = 0
        while offset < len(data):
            piece = data[offset:offset + next(sizes)]
            patched = self("PATCH", path, query, {"Content-Type": "application/octet-stream",
                                                  "Content-Range": f"{offset}-{offset + len(piece) - 1}"},
                           piece, fresh=fresh)
            assert patched.status == 202, patched.body
            assert patched.header("Range") == f"0-{offset + len(piece) - 1}"
            path, query = patched.location()
            offset += len(piece)
        done = self("PUT", path, f"{query}&digest={digest}", fresh=fresh)
        assert done.status == 201, done.body
        assert done.header("Docker-Content-Digest") == digest
        return digest


def _gateway_error(status: int, message: str) -> dict[str, Any]:
    """What API Gateway answers itself, as a proxy result."""
    return {"statusCode": status, "headers": {"Content-Type": "application/json"},
            "body": json.dumps({"message": message}, separators=(",", ":")), "isBase64Encoded": False}


def chunks_of(data: bytes, sizes: Iterable[int]) -> list[bytes]:
    out, offset = [], 0
    for size in sizes:
        out.append(data[offset:offset + size])
        offset += size
    return out
