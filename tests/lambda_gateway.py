"""A stand-in for API Gateway + Lambda in front of app.py, with the platform's limits.

`lambda_gateway(env, mode=...)` runs this module as a separate process on a free
loopback port: it imports app.py with exactly the environment the test gives (as a
function instance would on its init), then serves HTTP the way API Gateway fronts a
Lambda proxy integration:

* the whole request is read first (Content-Length or Transfer-Encoding: chunked,
  which the gateway assembles), then turned into a proxy event — REST API payload
  1.0 (`mode="rest"`) or HTTP API payload 2.0 (`mode="http"`) — with binary bodies
  base64-encoded;
* an event over 6,291,456 bytes (Lambda's invocation payload limit, counted after
  base64) is answered `413 {"message":"Request Too Long"}` without calling the
  function, and so is a body over API Gateway's own 10 MB payload limit;
* the function gets `(event, context)`; after `timeout` seconds (API Gateway's 30 s)
  the client gets `504 {"message":"Endpoint request timed out"}`; a response
  payload over Lambda's limit, a function error or a malformed result is
  `502 {"message":"Internal server error"}`;
* in REST mode the function's response headers are remapped or dropped as a REST
  API does with Lambda proxy responses (WWW-Authenticate becomes
  x-amzn-Remapped-WWW-Authenticate, which is what a client of a REST API meets), and
  the stage can sit in the path (`/api/v2/...`) as `chalice deploy` gives it;
* invocations run in one warm instance, or on a fresh registry each ("cold"), or on
  instances that scale as Lambda's do, a process each ("isolated");
* with active tracing (AWS_XRAY_DAEMON_ADDRESS in the environment) each invocation
  gets its own _X_AMZN_TRACE_ID, as the runtime sets it;
* in REST mode, a route that app.py gives a Lambda authorizer (`@app.authorizer`, as
  `chalice deploy` attaches it: a TOKEN authorizer on the Authorization header) is
  authorized first, and the gateway's own refusals are rendered from the API's gateway
  responses (`gateway_responses=`, PutGatewayResponse's shape) - see `TokenAuthorizer`;
* every request is recorded, one JSON line each, so tests can assert what reached
  the function (`LambdaGateway.records()`).

Tests use `GatewayClient` to talk to it with exact control of headers and bodies,
or point any registry client (skopeo, docker) at `LambdaGateway.url`.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import os
import re
import secrets
import sys
import sysconfig
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping, Optional, Sequence, Union
from urllib.parse import parse_qsl, urlsplit

# Lambda refuses a synchronous invocation whose request payload is over 6 MB
# ("Request must be smaller than 6291456 bytes for the InvokeFunction operation")
# and a response over "maximum allowed payload size (6291556 bytes)" - the two
# numbers differ in Lambda's own messages, and the gateway inherits both.
EVENT_LIMIT = 6_291_456
RESPONSE_LIMIT = 6_291_556
# API Gateway's payload limit (REST and HTTP APIs): over it no event is even built.
PAYLOAD_LIMIT = 10 * 1024 * 1024
# API Gateway's maximum integration timeout (REST: 29 s by default, HTTP: 30 s).
GATEWAY_TIMEOUT = 30.0
MODES = ("rest", "http")
INSTANCES = ("warm", "cold", "isolated")
REST_STAGE = "api"  # the stage `chalice deploy` creates (.chalice/config.json)
ACCOUNT = "123456789012"
API_ID = "stratusgw1"

TOO_LONG = (413, "Request Too Long")
TIMED_OUT = (504, "Endpoint request timed out")
INTERNAL = (502, "Internal server error")

# What a REST API does to a Lambda proxy response's headers: they are renamed
# x-amzn-Remapped-<name> (the gateway sends its own Date, and the Content-Length of
# the body it sends), hop-by-hop ones are dropped. Sources: the developer guide's notes
# for REST APIs (its table of headers sent to the client); LocalStack's header tables,
# validated against AWS (Connection, Content-Length, Date, Server for proxy
# integrations); users' reports for Lambda proxies (WWW-Authenticate in
# serverless-offline#236, Authorization in aws-sam-cli#696). The remapped
# WWW-Authenticate is what matters to a registry: its auth challenge never reaches the
# client. HTTP APIs pass the function's headers through.
REST_REMAPPED = frozenset({"authorization", "connection", "content-length", "content-md5", "max-forwards",
                           "user-agent", "www-authenticate", "date", "server"})
REST_DROPPED = frozenset({"expect", "host", "proxy-authenticate", "te", "trailer", "transfer-encoding",
                          "upgrade", "via"})
# Request headers a Lambda integration never sees (same sources, the request side); a
# REST API also leaves out Content-Length (the body's length is the body's) and
# WWW-Authenticate.
REQUEST_DROPPED = frozenset({"connection", "content-md5", "expect", "max-forwards", "proxy-authenticate",
                             "server", "te", "trailer", "transfer-encoding", "upgrade", "keep-alive"})
REST_REQUEST_DROPPED = REQUEST_DROPPED | {"content-length", "www-authenticate"}
# Response headers the gateway always sets itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"})
# HTTP APIs have no binary media types setting; the gateway passes these media types to
# the function as text and anything else base64-encoded (an approximation of AWS's
# undocumented rule), and a body that is not UTF-8 base64-encoded whatever its type.
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")
ROUTES = {"/v2": frozenset({"GET", "HEAD"}),
          "/v2/{proxy+}": frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})}


# -- what the test sees ----------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One request as the gateway handled it."""

    request_id: str
    method: str
    path: str                        # as the client sent it, stage prefix included
    query: str
    body_bytes: int                  # bytes of body the client sent
    event_bytes: Optional[int]       # the serialized event; None when none was built
    reached_function: bool
    status: int                      # what the client got
    function_status: Optional[int]   # what the function answered, if it did
    response_bytes: Optional[int]    # the function's serialized result
    response_base64: Optional[bool]  # the result's isBase64Encoded
    outcome: str                     # "ok", "request-too-long", "timeout", "response-too-large",
                                     # "function-error", "malformed-response", "missing-route",
                                     # "gateway-response" (the gateway refused: an authorizer)
    instance: Optional[int] = None   # pid of the process that ran the invocation
    authorizer: Optional[str] = None  # REST route with an authorizer: "missing-token" (not
                                      # invoked), "allow", "deny", "unauthorized", "error"
    duration_ms: Optional[float] = None  # the function's invocation as the gateway waited for it
                                         # (what Lambda bills, rounded up to 1 ms)


@dataclass(frozen=True)
class LambdaGateway:
    url: str                  # base URL clients use (with /<stage> when the stage is in the path)
    port: int
    mode: str
    stage: str
    record_path: Path
    event_limit: int = EVENT_LIMIT
    pid: int = 0

    @property
    def host(self) -> str:
        """host:port, as docker and skopeo name a registry."""
        return f"127.0.0.1:{self.port}"

    def records(self) -> list[Record]:
        if not self.record_path.exists():
            return []
        lines = self.record_path.read_text().splitlines()
        return [Record(**json.loads(line)) for line in lines if line.strip()]

    def invocations(self) -> list[Record]:
        return [r for r in self.records() if r.reached_function]

    def assert_nothing_over_the_limit_reached_the_function(self) -> None:
        over = [r for r in self.invocations() if r.event_bytes is None or r.event_bytes > self.event_limit]
        assert not over, over

    def client(self) -> "GatewayClient":
        return GatewayClient(self.url)


@contextmanager
def lambda_gateway(
    env: Mapping[str, str],
    mode: str = "http",
    *,
    stage: Optional[str] = None,
    stage_in_path: bool = False,
    timeout: float = GATEWAY_TIMEOUT,
    event_limit: int = EVENT_LIMIT,
    response_limit: int = RESPONSE_LIMIT,
    instances: str = "warm",
    head_content_length: str = "function",
    workdir: Optional[Path] = None,
    gateway_responses: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Iterator[LambdaGateway]:
    """The gateway in front of app.py imported with env (plus the variables the Lambda
    runtime sets, which env may override), until the block ends; stopped by pid.

    instances: "warm" (default) runs invocations concurrently in one imported app, like a
    server; "cold" builds the registry afresh for every invocation, one at a time, as when
    each request of a push lands on a new function instance; "isolated" scales as Lambda
    does - a process per instance, each running one invocation at a time, a new one
    started (cold) when none is idle.
    head_content_length="body" answers a HEAD with the Content-Length of its empty body
    (the function's in x-amzn-Remapped-Content-Length on a REST API) instead of the
    function's: what a REST API does there is undocumented, this shows what depends on it.
    gateway_responses: a REST API's customized gateway responses by type (statusCode,
    responseParameters, responseTemplates), as PutGatewayResponse takes them."""
    import tempfile

    from .servers import ROOT, free_port, process

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if instances not in INSTANCES:
        raise ValueError(f"instances must be one of {INSTANCES}")
    stage = stage or (REST_STAGE if mode == "rest" else "$default")
    if stage_in_path and stage == "$default":
        raise ValueError("the $default stage has no path prefix")
    owned = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="lambda-gateway-")) if owned else workdir
    port = free_port()
    record_path = workdir / f"gateway-{port}.jsonl"
    argv = [sys.executable, "-m", "tests.lambda_gateway", "--port", str(port), "--mode", mode,
            "--stage", stage, "--timeout", str(timeout), "--event-limit", str(event_limit),
            "--response-limit", str(response_limit), "--instances", instances, "--record", str(record_path),
            "--head-content-length", head_content_length]
    if stage_in_path:
        argv.append("--stage-in-path")
    if gateway_responses:
        if mode != "rest":
            raise ValueError("gateway responses are a REST API's")
        responses_path = workdir / f"gateway-responses-{port}.json"
        responses_path.write_text(json.dumps(gateway_responses))
        argv += ["--gateway-responses", str(responses_path)]
    full_env = {**runtime_environment(), "PYTHONPATH": str(ROOT), **env}
    with process(argv, port, full_env, log_path=workdir / f"gateway-{port}.log", cwd=ROOT,
                 timeout=60, inherit_env=False) as proc:
        prefix = f"/{stage}" if stage_in_path else ""
        yield LambdaGateway(f"http://127.0.0.1:{port}{prefix}", port, mode, stage, record_path,
                            event_limit, proc.pid)
    if owned:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def runtime_environment(function_name: str = "stratus-dev", memory_mb: int = 1024,
                        task_root: Optional[Path] = None) -> dict[str, str]:
    """What the Lambda runtime sets in every function's environment (the developer guide's
    "Defined runtime environment variables"), as a managed Python runtime sets it.

    Libraries decide where they run from these: botocore reads AWS_EXECUTION_ENV and
    AWS_LAMBDA_FUNCTION_NAME, Stratus the latter. `task_root` is the
    function's code (/var/task; here the repository, or an unpacked deployment package);
    LAMBDA_RUNTIME_DIR is where the runtime's own SDK lives (/var/runtime; here the site
    directory that holds boto3). Left out: LD_LIBRARY_PATH (pointing the dynamic loader
    at the task root could shadow this machine's libraries), PYTHONPATH (callers choose
    the import path), credentials (the caller's role: moto's), and the X-Ray variables
    (AWS_XRAY_DAEMON_ADDRESS, AWS_XRAY_CONTEXT_MISSING), which Lambda sets only on a
    function with active tracing - tests that trace add them, and the stand-in then sets
    _X_AMZN_TRACE_ID per invocation.
    """
    from .servers import ROOT

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "PYTHONUNBUFFERED": "1",
        "_HANDLER": "app.app",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EXECUTION_ENV": f"AWS_Lambda_python{version}",
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function_name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": f"{time.strftime('%Y/%m/%d', time.gmtime())}/[$LATEST]{secrets.token_hex(16)}",
        "LAMBDA_TASK_ROOT": str(task_root or ROOT),
        "LAMBDA_RUNTIME_DIR": sysconfig.get_paths()["purelib"],
    }


# -- a client with exact control of what is sent ---------------------------------------------


class Reply:
    def __init__(self, status: int, headers: Sequence[tuple[str, str]], body: bytes, base: str):
        self.status = status
        self.header_list = list(headers)
        self.headers: dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            self.headers[key] = f"{self.headers[key]},{value}" if key in self.headers else value
        self.body = body
        self._base = base

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)

    def location(self) -> tuple[str, str]:
        """The Location as (path relative to the gateway's base URL, query)."""
        parts = urlsplit(self.header("Location") or "")
        prefix = urlsplit(self._base).path
        path = parts.path[len(prefix):] if prefix and parts.path.startswith(prefix + "/") else parts.path
        return path, parts.query


class GatewayClient:
    """Plain HTTP to a gateway: exactly the headers given, plus Host and Content-Length."""

    def __init__(self, base_url: str, timeout: float = 120.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def __call__(self, method: str, path: str, query: str = "", headers: Optional[Mapping[str, str]] = None,
                 body: Union[bytes, Iterator[bytes]] = b"", *, chunked: bool = False) -> Reply:
        parts = urlsplit(self.base_url)
        target = parts.path + path + (f"?{query}" if query else "")
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)
        try:
            send_headers = dict(headers or {})
            if chunked:
                send_headers["Transfer-Encoding"] = "chunked"
                connection.request(method, target, body=body, headers=send_headers, encode_chunked=True)
            else:
                if method in ("POST", "PUT", "PATCH") or body:
                    send_headers.setdefault("Content-Length", str(len(body)))  # type: ignore[arg-type]
                connection.request(method, target, body=body or None, headers=send_headers)
            response = connection.getresponse()
            data = response.read()
            return Reply(response.status, response.getheaders(), data, self.base_url)
        finally:
            connection.close()

    def push_blob(self, name: str, data: bytes, chunk: Union[int, Sequence[int]]) -> str:
        """POST, PATCH in chunks (of one size, or of the sizes given in turn), PUT; each
        answer checked as a client would. Returns the digest."""
        import hashlib

        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        started = self("POST", f"/v2/{name}/blobs/uploads/")
        assert started.status == 202, started.body
        path, query = started.location()
        sizes = itertools.cycle([chunk] if isinstance(chunk, int) else chunk)
        offset = 0
        while offset < len(data):
            piece = data[offset:offset + next(sizes)]
            patched = self("PATCH", path, query, {"Content-Type": "application/octet-stream",
                                                  "Content-Range": f"{offset}-{offset + len(piece) - 1}"}, piece)
            assert patched.status == 202, (patched.status, patched.body[:500])
            assert patched.header("Range") == f"0-{offset + len(piece) - 1}"
            path, query = patched.location()
            offset += len(piece)
        done = self("PUT", path, f"{query}&digest={digest}")
        assert done.status == 201, done.body
        assert done.header("Docker-Content-Digest") == digest
        return digest


# -- the gateway process ----------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    mode: str
    stage: str
    stage_in_path: bool
    timeout: float
    event_limit: int
    response_limit: int
    instances: str
    record: Path
    port: int
    head_length: str = "function"
    gateway_responses: Optional[dict] = None


class _Body:
    """The request body as the gateway buffers it: whole, or only counted when too long."""

    def __init__(self, data: Optional[bytes], size: int):
        self.data, self.size = data, size


def read_body(stream: BinaryIO, headers: Mapping[str, str], limit: int) -> _Body:
    """Reads Content-Length bytes or a whole chunked body; keeps at most `limit` bytes
    (the rest is read and discarded so the client gets the answer, not a reset)."""
    kept: list[bytes] = []
    size = 0

    def take(piece: bytes) -> None:
        nonlocal size
        size += len(piece)
        if size <= limit:
            kept.append(piece)

    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            line = stream.readline(1024)
            length = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if length == 0:
                break
            while length:
                piece = stream.read(min(length, 1 << 20))
                if not piece:
                    raise ConnectionError("client closed inside a chunk")
                take(piece)
                length -= len(piece)
            stream.readline(1024)  # the CRLF closing the chunk
        while stream.readline(65536) not in (b"\r\n", b"\n", b""):
            pass  # trailers, dropped
    else:
        remaining = int(headers.get("content-length") or 0)
        while remaining:
            piece = stream.read(min(remaining, 1 << 20))
            if not piece:
                raise ConnectionError("client closed inside the body")
            take(piece)
            remaining -= len(piece)
    return _Body(b"".join(kept) if size <= limit else None, size)


def _is_text(content_type: str, body: bytes) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    textual = kind.startswith(TEXT_TYPES) or kind.endswith(("+json", "+xml"))
    if not textual:
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _route(resource_path: str) -> Optional[tuple[str, Optional[str]]]:
    """(route key, proxy parameter) of the API's two resources, or None."""
    if resource_path in ("/v2", "/v2/"):
        return "/v2", None
    if resource_path.startswith("/v2/"):
        return "/v2/{proxy+}", resource_path[len("/v2/"):]
    return None


def _trace_id() -> str:
    return f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}"


def _request_time(now: float) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now))


@dataclass
class IncomingRequest:
    method: str
    path: str                           # as sent, stage prefix included
    query: str
    headers: list[tuple[str, str]]      # as sent, in order
    body: bytes
    source_ip: str
    port: int


def rest_event(request: IncomingRequest, resource_path: str, route: str, proxy: Optional[str],
               stage: str, request_id: str, authorizer: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """A REST API (payload format 1.0) Lambda proxy event; every body base64-encoded,
    as with app.py's binary media types `*/*`."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in _forwarded(request, "X-Amzn-Trace-Id", REST_REQUEST_DROPPED):
        single[name] = value
        multi.setdefault(name, []).append(value)
    query = parse_qsl(request.query, keep_blank_values=True)
    multi_query: dict[str, list[str]] = {}
    for key, value in query:
        multi_query.setdefault(key, []).append(value)
    now = time.time()
    return {
        "resource": route,
        "path": resource_path,
        "httpMethod": request.method,
        "headers": single or None,
        "multiValueHeaders": multi or None,
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": {"proxy": proxy} if proxy is not None else None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "a1b2c3",
            "resourcePath": route,
            "httpMethod": request.method,
            "extendedRequestId": base64.b64encode(secrets.token_bytes(10)).decode(),
            "requestTime": _request_time(now),
            "path": request.path,
            "accountId": ACCOUNT,
            "protocol": "HTTP/1.1",
            "stage": stage,
            "domainPrefix": API_ID,
            "requestTimeEpoch": int(now * 1000),
            "requestId": request_id,
            "identity": {"cognitoIdentityPoolId": None, "accountId": None, "cognitoIdentityId": None,
                         "caller": None, "sourceIp": request.source_ip, "principalOrgId": None,
                         "accessKey": None, "cognitoAuthenticationType": None,
                         "cognitoAuthenticationProvider": None, "userArn": None,
                         "userAgent": single.get("User-Agent", ""), "user": None},
            "domainName": f"127.0.0.1:{request.port}",
            "apiId": API_ID,
            **({"authorizer": dict(authorizer)} if authorizer is not None else {}),
        },
        "body": base64.b64encode(request.body).decode("ascii") if request.body else None,
        "isBase64Encoded": bool(request.body),
    }


def http_event(request: IncomingRequest, route: str, proxy: Optional[str], stage: str,
               request_id: str) -> dict[str, Any]:
    """An HTTP API (payload format 2.0) event: lower-case headers, repeated ones and
    repeated query parameters joined by commas, cookies apart, text bodies as text."""
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in _forwarded(request, "x-amzn-trace-id", REQUEST_DROPPED):
        key = name.lower()
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    query: dict[str, str] = {}
    for key, value in parse_qsl(request.query, keep_blank_values=True):
        query[key] = f"{query[key]},{value}" if key in query else value
    text = bool(request.body) and _is_text(headers.get("content-type", ""), request.body)
    now = time.time()
    route_key = f"ANY {route}"
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": request.path,
        "rawQueryString": request.query,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": API_ID,
            "domainName": f"127.0.0.1:{request.port}",
            "domainPrefix": "127",
            "http": {"method": request.method, "path": request.path, "protocol": "HTTP/1.1",
                     "sourceIp": request.source_ip, "userAgent": headers.get("user-agent", "")},
            "requestId": request_id,
            "routeKey": route_key,
            "stage": stage,
            "time": _request_time(now),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": bool(request.body) and not text,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if proxy is not None:
        event["pathParameters"] = {"proxy": proxy}
    if stage != "$default":
        event["stageVariables"] = None
    if request.body:
        event["body"] = request.body.decode("utf-8") if text else base64.b64encode(request.body).decode("ascii")
    return event


def _forwarded(request: IncomingRequest, trace_header: str, dropped: frozenset) -> list[tuple[str, str]]:
    """The client's headers as the function sees them: hop-by-hop ones dropped, the
    gateway's X-Forwarded-* and trace id added (plain http here, https on AWS)."""
    kept = [(n, v) for n, v in request.headers if n.lower() not in dropped
            and not n.lower().startswith("x-forwarded-") and n.lower() != "x-amzn-trace-id"]
    # a client's own X-Forwarded-For is kept in front of the address the gateway saw
    claimed = [v for n, v in request.headers if n.lower() == "x-forwarded-for"]
    chain = ", ".join([*claimed, request.source_ip])
    return kept + [("X-Forwarded-For", chain), ("X-Forwarded-Port", str(request.port)),
                   ("X-Forwarded-Proto", "http"), (trace_header, _trace_id())]


class LambdaContext:
    """The context object the Python runtime passes to a handler."""

    def __init__(self, request_id: str, deadline: float):
        name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        region = os.environ.get("AWS_REGION", "us-east-1")
        self.aws_request_id = request_id
        self.function_name = name
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{ACCOUNT}:function:{name}"
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024"))
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _trace_invocation(event: Mapping[str, Any]) -> None:
    """What the Python runtime does before each invocation of a function with active
    tracing (AWS_XRAY_DAEMON_ADDRESS set): _X_AMZN_TRACE_ID names this invocation's trace
    (the root API Gateway put in X-Amzn-Trace-Id) and Lambda's own segment as the parent.
    Sampled=1, unless the environment the function started with says Sampled=0."""
    if not os.environ.get("AWS_XRAY_DAEMON_ADDRESS"):
        return
    header = next((v for k, v in (event.get("headers") or {}).items() if k.lower() == "x-amzn-trace-id"), "")
    root = next((p[5:] for p in header.split(";") if p.startswith("Root=")), None)
    if root is None:
        return
    sampled = "0" if "Sampled=0" in _STARTING_TRACE else "1"
    os.environ["_X_AMZN_TRACE_ID"] = f"Root={root};Parent={secrets.token_hex(8)};Sampled={sampled}"


_STARTING_TRACE = os.environ.get("_X_AMZN_TRACE_ID", "")


class Function:
    """app.py's handler, invoked with a copy of the event as Lambda delivers it, in this
    process: one warm instance taking invocations concurrently, or ("cold") a registry
    built afresh for each invocation, one at a time."""

    # the function's own timeout (.chalice/config.json, dev stage); the gateway's is shorter
    FUNCTION_TIMEOUT = 60.0

    def __init__(self, instances: str):
        import app  # the function's init: module-level code runs once, as on a cold start

        self.module = app
        self.cold = instances == "cold"
        self._lock = threading.Lock()

    def invoke(self, event_bytes: bytes, request_id: str, timeout: float) -> tuple[str, Any, int]:
        """(outcome, result, pid of the instance): outcome "ok", "timeout" or "function-error"."""
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                context = LambdaContext(request_id, time.monotonic() + self.FUNCTION_TIMEOUT)
                event = json.loads(event_bytes)
                _trace_invocation(event)
                if self.cold:
                    with self._lock:
                        self.module.RegistryChalice._owner = None
                        outcome["result"] = self.module.app(event, context)
                else:
                    outcome["result"] = self.module.app(event, context)
            except BaseException:  # the runtime reports any error as a function error
                traceback.print_exc()
                outcome["error"] = True
            finally:
                done.set()

        # a daemon thread: a function still running when the gateway gives up keeps
        # running (as Lambda's does) but never holds the process open
        threading.Thread(target=run, name=f"invoke-{request_id[:8]}", daemon=True).start()
        if not done.wait(timeout):
            return "timeout", None, os.getpid()
        if outcome.get("error"):
            return "function-error", None, os.getpid()
        return "ok", outcome["result"], os.getpid()


def _instance_main(conn: Any) -> None:
    """One function instance in a process of its own: app.py imported once (its cold
    start), then one invocation at a time, each result serialized as the runtime does."""
    import app

    while True:
        try:
            event_bytes, request_id = conn.recv()
        except EOFError:
            return
        try:
            context = LambdaContext(request_id, time.monotonic() + Function.FUNCTION_TIMEOUT)
            event = json.loads(event_bytes)
            _trace_invocation(event)
            conn.send(("ok", json.dumps(app.app(event, context))))
        except BaseException:
            traceback.print_exc()
            conn.send(("function-error", None))


class IsolatedFunction:
    """Lambda's scaling: an idle instance takes the next invocation, and when none is idle
    a new one starts (a process of its own, paying its cold start within the gateway's
    timeout); an instance never runs two invocations at once and shares nothing with
    the others but what the function stores."""

    def __init__(self) -> None:
        import multiprocessing

        self._context = multiprocessing.get_context("spawn")  # a fresh interpreter, as a new instance
        self._idle: list[tuple[Any, Any]] = []
        self._lock = threading.Lock()

    def _acquire(self) -> tuple[Any, Any]:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_instance_main, args=(child,), daemon=True)
        process.start()
        child.close()
        return process, parent

    def _release(self, instance: tuple[Any, Any]) -> None:
        with self._lock:
            self._idle.append(instance)

    def _release_when_done(self, instance: tuple[Any, Any]) -> None:
        try:
            instance[1].recv()  # the answer nobody waits for any more
        except EOFError:
            return
        self._release(instance)

    def invoke(self, event_bytes: bytes, request_id: str, timeout: float) -> tuple[str, Any, int]:
        instance = self._acquire()
        process, conn = instance
        conn.send((event_bytes, request_id))
        if not conn.poll(timeout):
            # the instance keeps running; it takes invocations again once it has answered
            threading.Thread(target=self._release_when_done, args=(instance,), daemon=True).start()
            return "timeout", None, process.pid
        try:
            kind, payload = conn.recv()
        except EOFError:  # the instance died: Lambda reports that as a function error
            return "function-error", None, process.pid
        self._release(instance)
        if kind != "ok":
            return "function-error", None, process.pid
        return "ok", json.loads(payload), process.pid


# -- Lambda authorizers and gateway responses (REST APIs) ------------------------------------
#
# What API Gateway does, from the Developer Guide (docs.aws.amazon.com/apigateway/latest/
# developerguide/...):
# * apigateway-use-lambda-authorizer.html, api-gateway-lambda-authorizer-input.html: a TOKEN
#   authorizer gets {"type": "TOKEN", "authorizationToken": <the identity source header>,
#   "methodArn": "arn:aws:execute-api:<region>:<account>:<api>/<stage>/<METHOD>/<path>"}.
#   A missing or empty token is answered 401 without invoking it (the knowledge-center
#   article "api-gateway-401-error-lambda-authorizer").
# * api-gateway-lambda-authorizer-output.html: it answers {principalId, policyDocument,
#   context}; an explicit Deny for the methodArn, or no Allow, is 403 ACCESS_DENIED; a
#   function error "Unauthorized" is 401 UNAUTHORIZED; any other error or a malformed answer
#   is 500 AUTHORIZER_CONFIGURATION_ERROR. The context's values reach the integration as
#   requestContext.authorizer (with principalId) and gateway response templates as
#   $context.authorizer.<key>.
# * The Authorizer resource (API reference, API_Authorizer.html): authorizerResultTtlInSeconds
#   0 disables caching; only that is emulated (an authorizer with a TTL is refused here).
# * api-gateway-gatewayResponse-definition.html, supported-gateway-response-types.html and
#   the x-amazon-apigateway-gateway-responses extension pages: a gateway response per type
#   (statusCode, responseParameters `gatewayresponse.header.<name>` from a static 'value' or
#   method.request.header|querystring|path.<name>, responseTemplates not run through VTL
#   but with $context variables substituted), DEFAULT_4XX / DEFAULT_5XX standing in for
#   types not set; the defaults' body is {"message":$context.error.messageString}. Headers a
#   gateway response sets are the gateway's own, so none is remapped.

GATEWAY_RESPONSE_DEFAULTS = {
    # type: (status, x-amzn-ErrorType)
    "UNAUTHORIZED": (401, "UnauthorizedException"),
    "ACCESS_DENIED": (403, "AccessDeniedException"),
    "AUTHORIZER_CONFIGURATION_ERROR": (500, "AuthorizerConfigurationException"),
}
_STATIC = re.compile(r"^'(.*)'$", re.S)
_REQUEST_SOURCE = re.compile(r"^method\.request\.(header|querystring|path)\.(.+)$")
_TEMPLATE_VARIABLE = re.compile(r"\$context\.(authorizer\.\w+|error\.messageString|error\.message|requestId)")


def check_gateway_responses(responses: Mapping[str, Any]) -> None:
    """Refuses what this stand-in does not emulate, so no test passes on a mapping AWS
    would read differently."""
    for kind, response in responses.items():
        for key, source in (response.get("responseParameters") or {}).items():
            if not key.startswith("gatewayresponse.header."):
                raise ValueError(f"{kind}: only header parameters are emulated, not {key}")
            if not (_STATIC.match(source) or _REQUEST_SOURCE.match(source)):
                raise ValueError(f"{kind}: {key} from {source!r} is not emulated")


class TokenAuthorizer:
    """A route's Lambda TOKEN authorizer as a REST API runs it, with caching off."""

    def __init__(self, handler: Any, header: str, ttl: Optional[int]):
        if ttl != 0:
            raise ValueError(f"authorizer caching (ttl {ttl}) is not emulated: set ttl_seconds=0")
        self.handler, self.header = handler, header

    def authorize(self, request: IncomingRequest, method_arn: str, request_id: str
                  ) -> tuple[str, Optional[str], dict[str, str]]:
        """(outcome, gateway response type or None to go on, context for the integration
        or the gateway response)."""
        token = next((v for n, v in request.headers if n.lower() == self.header.lower()), "")
        if not token.strip():
            return "missing-token", "UNAUTHORIZED", {"error.message": "Unauthorized"}
        event = {"type": "TOKEN", "authorizationToken": token, "methodArn": method_arn}
        try:
            result = json.loads(json.dumps(self.handler(event, LambdaContext(request_id, time.monotonic() + 30))))
        except Exception as exc:  # noqa: BLE001 - the runtime reports any error alike
            if str(exc) == "Unauthorized":
                return "unauthorized", "UNAUTHORIZED", {"error.message": "Unauthorized"}
            traceback.print_exc()
            return "error", "AUTHORIZER_CONFIGURATION_ERROR", {"error.message": None}
        try:
            principal = result["principalId"]
            effect = _policy_effect(result["policyDocument"], method_arn)
            context = {k: str(v) for k, v in (result.get("context") or {}).items()}
        except (KeyError, TypeError, AttributeError):
            return "error", "AUTHORIZER_CONFIGURATION_ERROR", {"error.message": None}
        scoped = {f"authorizer.{k}": v for k, v in context.items()}
        if effect == "Allow":
            return "allow", None, {"principalId": str(principal), **context}
        message = ("User is not authorized to access this resource with an explicit deny" if effect == "Deny"
                   else "User is not authorized to access this resource")
        return "deny", "ACCESS_DENIED", {**scoped, "authorizer.principalId": str(principal),
                                         "error.message": message}


def _policy_effect(policy: Mapping[str, Any], method_arn: str) -> Optional[str]:
    """"Deny" if a statement denies execute-api:Invoke on the ARN, else "Allow" if one
    allows it, else None (IAM's evaluation: an explicit deny wins)."""
    import fnmatch

    statements = policy["Statement"]
    effects = set()
    for statement in [statements] if isinstance(statements, dict) else statements:
        actions = statement.get("Action", [])
        resources = statement.get("Resource", [])
        actions = [actions] if isinstance(actions, str) else actions
        resources = [resources] if isinstance(resources, str) else resources
        if any(a in ("*", "execute-api:*", "execute-api:Invoke") for a in actions) and \
                any(fnmatch.fnmatchcase(method_arn, r) for r in resources):
            effects.add(statement["Effect"])
    return "Deny" if "Deny" in effects else ("Allow" if "Allow" in effects else None)


def render_gateway_response(kind: str, configured: Mapping[str, Any], request: IncomingRequest,
                            proxy: Optional[str], variables: Mapping[str, Any], request_id: str
                            ) -> tuple[int, list[tuple[str, str]], bytes]:
    """The response API Gateway sends for a gateway response type."""
    status, error_type = GATEWAY_RESPONSE_DEFAULTS[kind]
    fallback = "DEFAULT_4XX" if status < 500 else "DEFAULT_5XX"
    response = configured.get(kind) or configured.get(fallback) or {}
    status = int(response.get("statusCode") or status)
    headers: list[tuple[str, str]] = []
    query = dict(parse_qsl(request.query, keep_blank_values=True))
    for key, source in (response.get("responseParameters") or {}).items():
        name = key[len("gatewayresponse.header."):]
        static = _STATIC.match(source)
        if static:
            headers.append((name, static.group(1)))
            continue
        where, what = _REQUEST_SOURCE.match(source).groups()
        value = {"header": next((v for n, v in request.headers if n.lower() == what.lower()), None),
                 "querystring": query.get(what), "path": proxy if what == "proxy" else None}[where]
        if value is not None:
            headers.append((name, value))
    template = (response.get("responseTemplates") or {}).get("application/json")
    if template is None:
        template = '{"message":$context.error.messageString}'
    message = variables.get("error.message")

    def substitute(match: "re.Match[str]") -> str:
        name = match.group(1)
        if name == "requestId":
            return request_id
        if name == "error.messageString":
            return json.dumps(message)
        value = variables.get(name)
        return "" if value is None else str(value)

    body = _TEMPLATE_VARIABLE.sub(substitute, template).encode("utf-8")
    headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                ("x-amzn-RequestId", request_id), ("x-amzn-ErrorType", error_type),
                ("x-amz-apigw-id", base64.b64encode(secrets.token_bytes(10)).decode())]
    return status, headers, body


class RouteAuthorizers:
    """The authorizers app.py's routes carry, as `chalice deploy` attaches them (imported
    in the gateway's process: an authorizer is a function of its own on Lambda)."""

    def __init__(self) -> None:
        import app

        self.routes = app.app.routes
        self._authorizers: dict[str, TokenAuthorizer] = {}

    def for_route(self, route: str, method: str) -> Optional[TokenAuthorizer]:
        entry = self.routes.get(route, {}).get(method)
        authorizer = getattr(entry, "authorizer", None)
        if authorizer is None:
            return None
        if authorizer.name not in self._authorizers:
            config = authorizer.config
            self._authorizers[authorizer.name] = TokenAuthorizer(authorizer, config.header, config.ttl_seconds)
        return self._authorizers[authorizer.name]


class Gateway:
    def __init__(self, settings: Settings, function: Union[Function, IsolatedFunction]):
        self.settings = settings
        self.function = function
        self._record_lock = threading.Lock()
        self.authorizers = RouteAuthorizers() if settings.mode == "rest" else None
        self.gateway_responses = settings.gateway_responses or {}
        check_gateway_responses(self.gateway_responses)

    def record(self, **values: Any) -> None:
        line = json.dumps({f.name: values.get(f.name) for f in fields(Record)})
        with self._record_lock, open(self.settings.record, "a") as out:
            out.write(line + "\n")

    def resource_path(self, path: str) -> Optional[str]:
        """The path without the stage prefix, or None when the stage is missing."""
        if not self.settings.stage_in_path:
            return path
        prefix = f"/{self.settings.stage}"
        if path == prefix:
            return "/"
        return path[len(prefix):] if path.startswith(prefix + "/") else None

    def handle(self, request: IncomingRequest, body_size: int, body_complete: bool) -> tuple[int, list, bytes, dict]:
        """(status, headers, body, record fields) for one request."""
        request_id = str(uuid.uuid4())
        base = {"request_id": request_id, "method": request.method, "path": request.path,
                "query": request.query, "body_bytes": body_size, "reached_function": False}
        if not body_complete:
            return (*self.message(*TOO_LONG), {**base, "status": 413, "outcome": "request-too-long"})
        resource_path = self.resource_path(request.path)
        matched = _route(resource_path) if resource_path is not None else None
        if matched is None or request.method not in ROUTES[matched[0]]:
            # what each kind of API answers for a path or method it has no route for
            status, text = (403, "Missing Authentication Token") if self.settings.mode == "rest" else (404, "Not Found")
            if resource_path is None and self.settings.mode == "rest":
                text = "Forbidden"
            return (*self.message(status, text), {**base, "status": status, "outcome": "missing-route"})
        route, proxy = matched
        authorized: Optional[dict[str, str]] = None
        authorizer = self.authorizers.for_route(route, request.method) if self.authorizers else None
        if authorizer is not None:
            region = os.environ.get("AWS_REGION", "us-east-1")
            method_arn = f"arn:aws:execute-api:{region}:{ACCOUNT}:{API_ID}/{self.settings.stage}/" \
                         f"{request.method}{resource_path}"
            outcome, refusal, context = authorizer.authorize(request, method_arn, request_id)
            base["authorizer"] = outcome
            if refusal is not None:
                status, headers, body = render_gateway_response(refusal, self.gateway_responses, request, proxy,
                                                                context, request_id)
                return status, headers, body, {**base, "status": status, "outcome": "gateway-response"}
            authorized = context
        if self.settings.mode == "rest":
            event = rest_event(request, resource_path, route, proxy, self.settings.stage, request_id, authorized)
        else:
            event = http_event(request, route, proxy, self.settings.stage, request_id)
        # API Gateway serializes compactly; Lambda counts the bytes it receives
        event_bytes = json.dumps(event, separators=(",", ":")).encode("utf-8")
        base["event_bytes"] = len(event_bytes)
        if len(event_bytes) > self.settings.event_limit:
            return (*self.message(*TOO_LONG), {**base, "status": 413, "outcome": "request-too-long"})
        base["reached_function"] = True
        started = time.perf_counter()
        outcome, result, base["instance"] = self.function.invoke(event_bytes, request_id, self.settings.timeout)
        base["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        if outcome == "timeout":
            return (*self.message(*TIMED_OUT), {**base, "status": 504, "outcome": "timeout"})
        if outcome != "ok":
            return (*self.message(*INTERNAL), {**base, "status": 502, "outcome": outcome})
        try:
            # the Python runtime returns the handler's result serialized with json.dumps
            response_bytes = len(json.dumps(result).encode("utf-8"))
        except (TypeError, ValueError):
            return (*self.message(*INTERNAL), {**base, "status": 502, "outcome": "malformed-response"})
        base["response_bytes"] = response_bytes
        if isinstance(result, dict):
            base["function_status"] = result.get("statusCode")
            base["response_base64"] = result.get("isBase64Encoded")
        if response_bytes > self.settings.response_limit:
            return (*self.message(*INTERNAL), {**base, "status": 502, "outcome": "response-too-large"})
        try:
            status, headers, body = self.proxy_response(result, request.method)
        except (KeyError, TypeError, ValueError):
            return (*self.message(*INTERNAL), {**base, "status": 502, "outcome": "malformed-response"})
        return status, headers, body, {**base, "status": status, "outcome": "ok"}

    def message(self, status: int, text: str) -> tuple[int, list, bytes]:
        body = json.dumps({"message": text}, separators=(",", ":")).encode()
        return status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body

    def keeps_head_length(self, method: str) -> bool:
        return method == "HEAD" and self.settings.head_length == "function"

    def proxy_response(self, result: Any, method: str) -> tuple[int, list[tuple[str, str]], bytes]:
        """The client's response from a proxy integration result (either payload format)."""
        if not isinstance(result, dict):
            raise ValueError("a proxy result is an object")
        status = int(result["statusCode"])
        pairs: list[tuple[str, str]] = [(k, str(v)) for k, v in (result.get("headers") or {}).items()]
        for name, values in (result.get("multiValueHeaders") or {}).items():
            if self.settings.mode == "http":
                break  # payload 2.0 has no multiValueHeaders
            pairs.extend((name, str(v)) for v in values)
        for cookie in result.get("cookies") or ():
            pairs.append(("Set-Cookie", cookie))
        raw = result.get("body") or ""
        body = base64.b64decode(raw) if result.get("isBase64Encoded") else str(raw).encode("utf-8")
        headers: list[tuple[str, str]] = []
        function_length = None
        for name, value in pairs:
            key = name.lower()
            if key == "content-length":
                function_length = value
                if self.settings.mode == "http" or self.keeps_head_length(method):
                    continue
            if self.settings.mode == "rest" and key in REST_DROPPED:
                continue
            if self.settings.mode == "rest" and key in REST_REMAPPED:
                headers.append((f"x-amzn-Remapped-{name}", value))
                continue
            if key in HOP_BY_HOP or key == "date":
                continue
            headers.append((name, value))
        # the gateway computes Content-Length from the body it sends; whether a HEAD keeps
        # the function's (the size a GET would send, which app.py's adapter counts on) is
        # not documented: head_length chooses, "function" by default
        keep = self.keeps_head_length(method) and function_length is not None
        length = function_length if keep else str(len(body))
        headers.append(("Content-Length", length))
        if self.settings.mode == "rest":
            headers.append(("x-amzn-RequestId", str(uuid.uuid4())))
            headers.append(("x-amz-apigw-id", base64.b64encode(secrets.token_bytes(10)).decode()))
        else:
            headers.append(("Apigw-Requestid", base64.b64encode(secrets.token_bytes(10)).decode()))
        return status, headers, b"" if method == "HEAD" else body


def _handler_class(gateway: Gateway) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as API Gateway offers

        def _serve(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                body = read_body(self.rfile, headers, PAYLOAD_LIMIT)
            except (ConnectionError, ValueError):
                self.close_connection = True
                return
            split = urlsplit(self.path)
            request = IncomingRequest(self.command, split.path, split.query, list(self.headers.items()),
                                      body.data or b"", self.client_address[0], gateway.settings.port)
            status, out_headers, out_body, record = gateway.handle(request, body.size, body.data is not None)
            gateway.record(**record)
            self.log_request(status)
            self.send_response_only(status)
            self.send_header("Date", self.date_time_string())
            for name, value in out_headers:
                self.send_header(name, value)
            self.end_headers()
            if out_body and self.command != "HEAD":
                self.wfile.write(out_body)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    return Handler


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=MODES, default="http")
    parser.add_argument("--stage", default="$default")
    parser.add_argument("--stage-in-path", action="store_true")
    parser.add_argument("--timeout", type=float, default=GATEWAY_TIMEOUT)
    parser.add_argument("--event-limit", type=int, default=EVENT_LIMIT)
    parser.add_argument("--response-limit", type=int, default=RESPONSE_LIMIT)
    parser.add_argument("--instances", choices=INSTANCES, default="warm")
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--head-content-length", choices=("function", "body"), default="function")
    parser.add_argument("--gateway-responses", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = Settings(args.mode, args.stage, args.stage_in_path, args.timeout, args.event_limit,
                        args.response_limit, args.instances, args.record, args.port, args.head_content_length,
                        json.loads(args.gateway_responses.read_text()) if args.gateway_responses else None)
    # imported before listening (ready means initialised), or by each instance as it starts
    function = IsolatedFunction() if settings.instances == "isolated" else Function(settings.instances)
    server = ThreadingHTTPServer(("127.0.0.1", settings.port), _handler_class(Gateway(settings, function)))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
