"""A stand-in for the Azure Functions host in front of azure_func/function_app.py.

Two processes, as on Azure, each started with exactly the environment a test gives
(a deployment's app settings) and stopped by pid:

- the **worker** (`python -m tests.functions_host worker`) indexes the function app
  the way the Python worker does at init. With PYTHON_ENABLE_INIT_INDEXING on and
  the HTTP streaming extension imported by the app, it serves the extension's own
  web app (FastAPI on uvicorn) with the worker's catch-all route and invokes the
  function with the streamed Request (HTTP "v2" mode). Otherwise it invokes the
  function with an azure.functions.HttpRequest carrying the whole body, as the host
  sends it over gRPC (classic mode). It writes the functions' metadata (routes,
  methods, mode) for the host to read, as the worker reports it at init.
- the **host** (`python -m tests.functions_host host`) is the HTTP front on a free
  loopback port. It routes by the functions' routes and host.json's routePrefix,
  refuses a body over FUNCTIONS_REQUEST_BODY_SIZE_LIMIT (default 104,857,600 bytes)
  with Kestrel's `413` before any function runs, decodes `Transfer-Encoding:
  chunked` bodies, forwards the request to the worker as the host's YARP forwarder
  does (the client's Host in X-Forwarded-Host, an `x-ms-invocation-id` header),
  streams both bodies through, and gives up on a function that has not answered
  `timeout` seconds after the request ended (230 s on Azure, where the load
  balancer's idle timeout ends the call) with the `500 The request timed out` that
  App Service's front end is reported to send. Every request is recorded as a JSON
  line (method, path, body bytes, whether it reached the function, status) for
  tests to read.

A body with Content-Length streams to the function as it arrives, as Kestrel would.
A chunked body is spooled to a temporary file until it ends (never into memory): a
chunked body over the limit is refused before the function is called, where the
real host in streaming mode would start the function and break its stream midway;
either way such a request fails, and no test can pass where the platform refuses.

    with functions_host(env, tmp_path, timeout=5) as host:
        requests.patch(host.url + location, data=body)
        assert all(not r.reached_function for r in host.records() if r.body_bytes > host.body_limit)
        host.worker_peak_rss()   # VmHWM of the worker, in bytes
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import inspect
import itertools
import json
import os
import re
import socket
import sys
import tempfile
import typing
import uuid
from contextlib import contextmanager
from http import HTTPStatus
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
FUNCTION_APP = ROOT / "azure_func" / "function_app.py"
DEFAULT_BODY_LIMIT = 104_857_600  # ScriptConstants.DefaultMaxRequestBodySize in azure-functions-host
BODY_LIMIT_SETTING = "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"
DEFAULT_TIMEOUT = 230.0  # Azure Load Balancer's idle timeout, which ends any HTTP-triggered call
INVOCATION_HEADER = "x-ms-invocation-id"  # ScriptConstants.HttpProxyCorrelationHeader
TRUE_LIKE = {"1", "true", "t", "yes", "y"}  # the worker's is_true_like
PIECE = 64 * 1024
# hop-by-hop headers the forwarder never copies (plus Host, which it replaces)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection",
              "proxy-authorization", "proxy-authenticate", "expect", "host", "trailer"}


@dataclass(frozen=True)
class Record:
    """One request as the host saw it."""

    method: str
    path: str  # with the query string
    content_length: Optional[int]  # as declared; None for a chunked body
    body_bytes: int  # body bytes the client sent (read, forwarded or discarded)
    reached_function: bool
    status: int  # 0 when the client left before an answer


@dataclass(frozen=True)
class FunctionsHost:
    url: str
    body_limit: int
    worker_pid: int
    host_pid: int
    record_path: Path
    metadata: dict

    @property
    def streaming(self) -> bool:
        """Whether the worker runs HTTP functions in streaming (HTTP v2) mode."""
        return bool(self.metadata["http_v2"])

    def records(self) -> list[Record]:
        if not self.record_path.exists():
            return []
        lines = self.record_path.read_text().splitlines()
        return [Record(**json.loads(line)) for line in lines if line.strip()]

    def worker_memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) of the worker process, in bytes, from /proc."""
        values = {}
        for line in Path(f"/proc/{self.worker_pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
        return values

    def reset_worker_peak_rss(self) -> None:
        """Start VmHWM again from the current RSS (Linux: "5" > clear_refs)."""
        Path(f"/proc/{self.worker_pid}/clear_refs").write_text("5")


def body_limit(environ: Mapping[str, str]) -> int:
    """The host's MaxRequestBodySize for these app settings (HttpRequestBodySizeMiddleware)."""
    text = environ.get(BODY_LIMIT_SETTING, "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else DEFAULT_BODY_LIMIT


@contextmanager
def functions_host(
    env: Mapping[str, str],
    tmp_path: Path,
    timeout: float = DEFAULT_TIMEOUT,
    hide_extension: bool = False,
    app: Path = FUNCTION_APP,
) -> Iterator[FunctionsHost]:
    """The function app behind the stand-in host until the block ends.

    env is the whole environment of both processes (the app settings; PATH and
    PYTHONPATH are added so they can start). hide_extension makes the HTTP streaming
    extension unimportable in the worker, as on a deployment without the package."""
    from tests.servers import free_port, process

    directory = Path(tempfile.mkdtemp(prefix="functions-host-", dir=tmp_path))
    worker_port, host_port = free_port(), free_port()
    metadata_path, record_path = directory / "metadata.json", directory / "requests.jsonl"
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), **env}
    worker_argv = [sys.executable, "-m", "tests.functions_host", "worker", "--port", str(worker_port),
                   "--app", str(app), "--metadata", str(metadata_path)]
    if hide_extension:
        worker_argv.append("--hide-extension")
    host_argv = [sys.executable, "-m", "tests.functions_host", "host", "--port", str(host_port),
                 "--worker", f"127.0.0.1:{worker_port}", "--metadata", str(metadata_path),
                 "--records", str(record_path), "--timeout", str(timeout),
                 "--host-json", str(app.parent / "host.json")]
    with process(worker_argv, worker_port, environment, log_path=directory / "worker.log", cwd=ROOT,
                 timeout=60, inherit_env=False) as worker:
        with process(host_argv, host_port, environment, log_path=directory / "host.log", cwd=ROOT,
                     inherit_env=False) as host:
            yield FunctionsHost(
                url=f"http://127.0.0.1:{host_port}", body_limit=body_limit(environment),
                worker_pid=worker.pid, host_pid=host.pid, record_path=record_path,
                metadata=json.loads(metadata_path.read_text()),
            )


# -- the worker ------------------------------------------------------------------------------------


class _HideExtension:
    """An import hook that makes the HTTP extension package look absent."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "azurefunctions.extensions.http" or name.startswith("azurefunctions.extensions.http."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def _load_app(path: Path) -> Any:
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("function_app", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["function_app"] = module
    spec.loader.exec_module(module)
    return module


def _http_v2_enabled() -> bool:
    """HttpV2Registry._check_http_v2_enabled, with init indexing required as in handle_init."""
    if os.environ.get("PYTHON_ENABLE_INIT_INDEXING", "").strip().lower() not in TRUE_LIKE:
        return False
    import azurefunctions.extensions.base as ext_base

    return ext_base.HttpV2FeatureChecker.http_v2_enabled()


def _index(module: Any, http_v2: bool) -> list[dict]:
    """The HTTP functions, checked as the worker checks their annotations."""
    import azure.functions as func

    found = []
    for function in module.app.get_functions():
        bindings = json.loads(function.get_function_json())["bindings"]
        triggers = [b for b in bindings if b["type"] == "httpTrigger"]
        if not triggers:
            continue
        trigger = triggers[0]
        user_function = function.get_user_function()
        hints = typing.get_type_hints(user_function)
        param = hints.get(trigger["name"])
        if http_v2:
            import azurefunctions.extensions.base as ext_base

            valid = ext_base.RequestTrackerMeta.check_type(param)
        else:
            valid = inspect.isclass(param) and issubclass(param, func.HttpRequest)
        if not valid:  # the worker's FunctionLoadError
            raise TypeError(f"{function.get_function_name()}: binding {trigger['name']} has invalid "
                            f"annotation {param!r} for {'HTTP streaming' if http_v2 else 'HttpRequest'}")
        found.append({
            "name": function.get_function_name(), "route": trigger.get("route") or function.get_function_name(),
            "methods": [m.upper() for m in trigger.get("methods") or []], "param": trigger["name"],
            "function": user_function,
        })
    return found


def _route_regex(template: str) -> re.Pattern:
    """An ASP.NET route template ("v2/{*path}", "items/{id}") as a regex with named groups."""
    pattern = ""
    for part in re.split(r"(\{[^}]+\})", template.strip("/")):
        if part.startswith("{"):
            name = part[1:-1].split(":")[0].split("=")[0].rstrip("?")
            if name.startswith("*"):
                pattern += f"(?P<{name[1:]}>.*)"
            else:
                pattern += f"(?P<{name}>[^/]+)"
        else:
            pattern += re.escape(part)
    return re.compile(pattern + "/?")


def _match(functions: list[dict], prefix: str, method: str, path: str) -> Optional[tuple[dict, dict]]:
    relative = path.lstrip("/")
    if prefix:
        if not (relative == prefix or relative.startswith(prefix + "/")):
            return None
        relative = relative[len(prefix):].lstrip("/")
    for function in functions:
        found = _route_regex(function["route"]).fullmatch(relative)
        if found and (not function["methods"] or method in function["methods"]):
            return function, {k: v for k, v in found.groupdict().items() if v is not None}
    return None


async def _call(function: Any, argument: Any) -> Any:
    if inspect.iscoroutinefunction(function):
        return await function(argument)
    # the worker runs sync functions on its thread pool
    return await asyncio.get_running_loop().run_in_executor(None, function, argument)


def _classic_app(functions: list[dict], prefix: str) -> Any:
    """An ASGI app: buffers the body, as the host sends it over gRPC, and calls the
    function with an azure.functions.HttpRequest for the client's original URL."""
    import azure.functions as func

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        headers = {}
        for key, value in scope["headers"]:
            headers[key.decode("latin-1").lower()] = value.decode("latin-1")
        headers.pop(INVOCATION_HEADER, None)
        host = headers.pop("x-forwarded-host", headers.get("host", "localhost"))
        headers["host"] = host
        scheme = headers.get("x-forwarded-proto", "http").split(",")[0].strip()
        path = scope["path"]
        query = scope["query_string"].decode("latin-1")
        url = f"{scheme}://{host}{path}" + (f"?{query}" if query else "")
        function, route_params = _match(functions, prefix, scope["method"], path)
        request = func.HttpRequest(
            scope["method"], url, headers=headers, body=body,
            params={k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()},
            route_params=route_params,
        )
        del body, chunks
        try:
            response = await _call(function["function"], request)
        except Exception as exc:  # the host answers a failed invocation with a bare 500
            print(f"function failed: {exc!r}", file=sys.stderr, flush=True)
            await send({"type": "http.response.start", "status": 500, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        out = response.get_body() or b""
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
               if k.lower() != "content-length"]
        if not any(k.lower() == b"content-type" for k, _ in raw) and response.mimetype:
            raw.append((b"content-type", response.mimetype.encode("latin-1")))
        if scope["method"] == "HEAD":
            length = response.headers.get("Content-Length", str(len(out)))
            raw.append((b"content-length", length.encode()))
            out = b""
        else:
            raw.append((b"content-length", str(len(out)).encode()))
        await send({"type": "http.response.start", "status": response.status_code, "headers": raw})
        await send({"type": "http.response.body", "body": out})

    return app


def _streaming_server(functions: list[dict], prefix: str, port: int) -> Any:
    """The worker's HTTP v2 server (http_v2.initialize_http_server): the extension's
    own WebApp with one catch-all route, whose request becomes the function's
    argument after its route parameters are synchronised."""
    import importlib

    import azurefunctions.extensions.base as ext_base

    extension = importlib.import_module(ext_base.ModuleTrackerMeta.get_module())
    web_app = extension.WebApp()
    request_type = ext_base.RequestTrackerMeta.get_request_type()
    synchronizer = ext_base.RequestTrackerMeta.get_synchronizer()

    async def catch_all(request: request_type):  # type: ignore[valid-type]
        if request.headers.get(INVOCATION_HEADER) is None:
            raise ValueError(f"Header {INVOCATION_HEADER} not found")
        function, route_params = _match(functions, prefix, request.method, request.url.path)
        synchronizer.sync_route_params(request, route_params)
        return await _call(function["function"], request)

    catch_all.__annotations__["request"] = request_type
    web_app.route(catch_all)
    return extension.WebServer("127.0.0.1", port, web_app)


def run_worker(port: int, app: Path, metadata: Path, hide_extension: bool) -> None:
    if hide_extension:
        sys.meta_path.insert(0, _HideExtension())
    module = _load_app(app)
    http_v2 = _http_v2_enabled()
    functions = _index(module, http_v2)
    prefix = _route_prefix(app.parent / "host.json")
    metadata.write_text(json.dumps({
        "http_v2": http_v2, "pid": os.getpid(),
        "functions": [{k: v for k, v in f.items() if k != "function"} for f in functions],
    }))
    if http_v2:
        asyncio.run(_streaming_server(functions, prefix, port).serve())
    else:
        import uvicorn

        # a function that never answers (the timeout test) must not hold up stopping
        config = uvicorn.Config(_classic_app(functions, prefix), host="127.0.0.1", port=port,
                                timeout_graceful_shutdown=1)
        uvicorn.Server(config).run()


def _route_prefix(host_json: Path) -> str:
    try:
        http = json.loads(host_json.read_text()).get("extensions", {}).get("http", {})
    except FileNotFoundError:
        http = {}
    return http.get("routePrefix", "api").strip("/")


# -- the host --------------------------------------------------------------------------------------


class _BadRequest(Exception):
    pass


async def _read_head(reader: asyncio.StreamReader) -> Optional[tuple[str, str, list[tuple[str, str]]]]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _BadRequest("incomplete request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise _BadRequest("request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = (lines[0].split(" ", 2) + ["", ""])[:3]
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return method.upper(), target, headers


def _get(headers: list[tuple[str, str]], name: str) -> Optional[str]:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


async def _chunks(reader: asyncio.StreamReader) -> Any:
    """The pieces of a chunked body, decoded."""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return
        remaining = size
        while remaining:
            piece = await reader.read(min(PIECE, remaining))
            if not piece:
                raise asyncio.IncompleteReadError(b"", remaining)
            remaining -= len(piece)
            yield piece
        await reader.readexactly(2)


class Host:
    def __init__(self, worker: str, metadata: dict, prefix: str, limit: int, timeout: float, records: Path):
        self.worker_host, worker_port = worker.split(":")
        self.worker_port = int(worker_port)
        self.functions = metadata["functions"]
        self.prefix = prefix
        self.limit = limit
        self.timeout = timeout
        self.records = records
        self.invocations = itertools.count(1)

    def record(self, method: str, target: str, length: Optional[int], sent: int, reached: bool, status: int) -> None:
        line = json.dumps({"method": method, "path": target, "content_length": length, "body_bytes": sent,
                           "reached_function": reached, "status": status})
        with open(self.records, "a") as out:
            out.write(line + "\n")

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self.serve_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, _BadRequest):
            pass
        finally:
            writer.close()

    async def respond(self, writer: asyncio.StreamWriter, status: int, reason: str, body: bytes = b"",
                      close: bool = False) -> None:
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += "Content-Type: text/html\r\n"
        if close:
            head += "Connection: close\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()

    async def serve_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await _read_head(reader)
        if head is None:
            return False
        method, target, headers = head
        chunked = "chunked" in (_get(headers, "transfer-encoding") or "").lower()
        length_text = _get(headers, "content-length")
        length = None if chunked else int(length_text or 0)
        keep_alive = (_get(headers, "connection") or "").lower() != "close"
        path = urlsplit(target).path
        if _match(self.functions, self.prefix, method, path) is None:
            sent = await self.discard(reader, writer, headers, chunked, length)
            self.record(method, target, length, sent, False, 404)
            await self.respond(writer, 404, "Not Found", close=True)
            return False
        if length is not None and length > self.limit:
            # Kestrel refuses a declared length over MaxRequestBodySize before the app reads it.
            # The body is read and dropped first so that a client that reads only after
            # sending (python-requests) gets the answer, and the record is written before it.
            sent = await self.discard(reader, writer, headers, chunked, length)
            self.record(method, target, length, sent, False, 413)
            await self.respond(writer, 413, "Payload Too Large", close=True)
            return False
        if (_get(headers, "expect") or "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        spool = None
        if chunked:
            spool, sent = await self.spool(reader)
            if sent > self.limit:
                spool.close()
                self.record(method, target, None, sent, False, 413)
                await self.respond(writer, 413, "Payload Too Large", close=True)
                return False
        try:
            status = await self.forward(reader, writer, method, target, headers, length, spool)
        finally:
            if spool is not None:
                spool.close()
        return keep_alive and status < 500

    async def discard(self, reader, writer, headers, chunked: bool, length: Optional[int],
                      answered: bool = False) -> int:
        """Read and drop a body nobody will see, so the client gets to read the answer."""
        if not answered and (_get(headers, "expect") or "").lower() == "100-continue":
            return 0  # the client waits for 100 Continue before sending: it sends nothing
        sent = 0
        try:
            if chunked:
                async for piece in _chunks(reader):
                    sent += len(piece)
            else:
                while sent < (length or 0):
                    piece = await reader.read(min(PIECE, length - sent))
                    if not piece:
                        break
                    sent += len(piece)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        return sent

    async def spool(self, reader: asyncio.StreamReader) -> tuple[Any, int]:
        """A chunked body in a temporary file (counting past the limit, keeping nothing past it)."""
        spool = tempfile.TemporaryFile()
        sent = 0
        async for piece in _chunks(reader):
            sent += len(piece)
            if sent <= self.limit:
                spool.write(piece)
        spool.seek(0)
        return spool, sent

    async def forward(self, reader, writer, method: str, target: str, headers: list[tuple[str, str]],
                      length: Optional[int], spool: Any) -> int:
        """Send the request to the worker and its answer to the client (recorded before the
        client can see it); returns the status."""
        client_host = _get(headers, "host") or "localhost"
        proto = (_get(headers, "x-forwarded-proto") or "http").split(",")[0].strip()
        peer = writer.get_extra_info("peername") or ("127.0.0.1", 0)
        out_headers = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP
                       and not k.lower().startswith("x-forwarded-") and k.lower() != "content-length"]
        body_length = length if spool is None else os.fstat(spool.fileno()).st_size
        out_headers += [
            ("Host", f"{self.worker_host}:{self.worker_port}"), ("X-Forwarded-Host", client_host),
            ("X-Forwarded-Proto", proto), ("X-Forwarded-For", peer[0]),
            (INVOCATION_HEADER, str(uuid.uuid5(uuid.NAMESPACE_OID, str(next(self.invocations))))),
            ("Content-Length", str(body_length or 0)), ("Connection", "close"),
        ]
        upstream = await _Upstream.open(self.worker_host, self.worker_port)
        try:
            head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in out_headers) + "\r\n"
            await upstream.send(head.encode("latin-1"))
            sent = 0
            # the body goes up while the worker may already answer (an early error)
            response_task = asyncio.ensure_future(_read_head(upstream))
            client_left = worker_stopped_reading = False
            while sent < (body_length or 0):
                try:
                    if spool is not None:
                        piece = spool.read(PIECE)
                    else:
                        piece = await reader.read(min(PIECE, body_length - sent))
                except ConnectionError:
                    piece = b""
                if not piece:
                    client_left = True
                    break
                sent += len(piece)
                try:
                    await upstream.send(piece)
                except ConnectionError:  # it answered without reading the rest, and closed
                    worker_stopped_reading = True
                    break
            if client_left:  # nobody is there to answer
                response_task.cancel()
                self.record(method, target, length, sent, True, 0)
                raise ConnectionError("client body ended early")
            if worker_stopped_reading and spool is None and sent < (length or 0):
                sent += await self.discard(reader, writer, [], False, length - sent, answered=True)
            try:
                response_head = await asyncio.wait_for(response_task, self.timeout)
            except asyncio.TimeoutError:
                self.record(method, target, length, sent, True, 500)
                await self.respond(writer, 500, "Internal Server Error",
                                   b"500 - The request timed out.\r\n"
                                   b"The web server failed to respond within the specified time.", close=True)
                return 500
            if response_head is None:
                self.record(method, target, length, sent, True, 502)
                await self.respond(writer, 502, "Bad Gateway", close=True)
                return 502
            self.record(method, target, length, sent, True, int(response_head[1]))
            return await self.relay(upstream, writer, method, response_head)
        finally:
            upstream.close()

    async def relay(self, up_reader: "_Upstream", writer: asyncio.StreamWriter, method: str,
                    response_head: tuple[str, str, list[tuple[str, str]]]) -> int:
        """The worker's response to the client, body streamed; returns its status."""
        _version, status_text, headers = response_head  # _read_head reads "HTTP/1.1 200 OK" as a request line
        status = int(status_text)
        chunked = "chunked" in (_get(headers, "transfer-encoding") or "").lower()
        length_text = _get(headers, "content-length")
        out = [(k, v) for k, v in headers if k.lower() not in ("connection", "keep-alive", "transfer-encoding")]
        no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        if not no_body and length_text is None:
            out.append(("Transfer-Encoding", "chunked"))
        reason = _reason(status)
        writer.write((f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in out)
                      + "\r\n").encode("latin-1"))
        if no_body:
            await writer.drain()
            return status
        if length_text is not None:
            remaining = int(length_text)
            while remaining:
                piece = await up_reader.read(min(PIECE, remaining))
                if not piece:
                    raise ConnectionError("worker response ended early")
                remaining -= len(piece)
                writer.write(piece)
                await writer.drain()
            return status
        pieces = _chunks(up_reader) if chunked else _until_eof(up_reader)
        async for piece in pieces:
            writer.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return status


class _Upstream:
    """A connection to the worker whose answer survives a failed send.

    A worker that answers before reading the whole body (an early 404 or 413) closes
    with unread bytes, which resets the connection. An asyncio transport closes
    itself on the first failed send and drops the answer still in the socket; here
    sending and receiving fail separately, and the answer is read to its end. It
    offers what _read_head and _chunks use of a StreamReader."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray()
        self.ended = False

    @classmethod
    async def open(cls, host: str, port: int) -> "_Upstream":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        return cls(sock)

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def _fill(self) -> bool:
        if self.ended:
            return False
        try:
            data = await self.loop.sock_recv(self.sock, PIECE)
        except ConnectionError:  # the reset after what was received: the end
            data = b""
        if not data:
            self.ended = True
            return False
        self.buffer += data
        return True

    def _take(self, count: int) -> bytes:
        piece = bytes(self.buffer[:count])
        del self.buffer[:count]
        return piece

    async def readuntil(self, separator: bytes) -> bytes:
        while (found := self.buffer.find(separator)) < 0:
            if len(self.buffer) > PIECE:
                raise asyncio.LimitOverrunError("response head too large", len(self.buffer))
            if not await self._fill():
                raise asyncio.IncompleteReadError(self._take(len(self.buffer)), None)
        return self._take(found + len(separator))

    async def read(self, count: int) -> bytes:
        if not self.buffer:
            await self._fill()
        return self._take(count)

    async def readexactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not await self._fill():
                raise asyncio.IncompleteReadError(self._take(len(self.buffer)), count)
        return self._take(count)

    def close(self) -> None:
        self.sock.close()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "-"


async def _until_eof(reader: asyncio.StreamReader) -> Any:
    while True:
        piece = await reader.read(PIECE)
        if not piece:
            return
        yield piece


def run_host(port: int, worker: str, metadata_path: Path, records: Path, timeout: float, host_json: Path) -> None:
    metadata = json.loads(metadata_path.read_text())
    host = Host(worker, metadata, _route_prefix(host_json), body_limit(os.environ), timeout, records)

    async def main() -> None:
        server = await asyncio.start_server(host.serve_connection, "127.0.0.1", port, limit=64 * 1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.functions_host")
    sub = parser.add_subparsers(dest="role", required=True)
    worker = sub.add_parser("worker")
    worker.add_argument("--port", type=int, required=True)
    worker.add_argument("--app", type=Path, default=FUNCTION_APP)
    worker.add_argument("--metadata", type=Path, required=True)
    worker.add_argument("--hide-extension", action="store_true")
    host = sub.add_parser("host")
    host.add_argument("--port", type=int, required=True)
    host.add_argument("--worker", required=True)
    host.add_argument("--metadata", type=Path, required=True)
    host.add_argument("--records", type=Path, required=True)
    host.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    host.add_argument("--host-json", type=Path, default=FUNCTION_APP.parent / "host.json")
    args = parser.parse_args(argv)
    if args.role == "worker":
        run_worker(args.port, args.app, args.metadata, args.hide_extension)
    else:
        run_host(args.port, args.worker, args.metadata, args.records, args.timeout, args.host_json)


if __name__ == "__main__":
    main()
