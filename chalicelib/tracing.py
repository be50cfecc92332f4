"""AWS X-Ray tracing: one subsegment per storage driver call and per cache call.

Enabled by ``tracing.xray: true``, or on Lambda when the function traces
(``tracing.xray`` absent, X-Ray's daemon address and trace header present). When it
is off no layer is wrapped: the request Context keeps its no-op tracer. When it is on:

* the storage driver and the descriptor cache are wrapped so each call runs in
  ``ctx.trace(...)``, which the request's Context maps to an X-Ray subsegment
  (named ``<driver>.<call>`` / ``cache.<call>``, with the path or digest and, for
  S3, the number of S3 requests the call made);
* on Lambda the invocation's segment is Lambda's own: each finished subsegment is
  sent on its own as its child; an invocation the trace header does not sample gets
  the no-op tracer, so it costs nothing;
* elsewhere (``stratus serve``) each sampled request gets a segment of its own,
  joined to an incoming ``X-Amzn-Trace-Id`` when there is one, and sent with its
  subsegments when the response is ready.

The documents are written and sent by xray.py (UDP to ``AWS_XRAY_DAEMON_ADDRESS``).
"""
from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from typing import Any, BinaryIO, Iterator, Mapping, Optional

from . import aws_runtime, xray
from .context import Context

SAMPLING_RATE_ENV = "STRATUS_XRAY_SAMPLING_RATE"  # requests traced outside Lambda, 0..1
_EXPECTED = ("PathNotFoundError", "DescriptorNotCachedError", "BlobUnknownError")


def wanted(config: Any, environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether to trace: configured, or on a Lambda function that traces."""
    environ = os.environ if environ is None else environ
    if config.tracing.xray_configured:
        return config.tracing.xray
    return (
        aws_runtime.on_lambda(environ)
        and bool(environ.get(xray.DAEMON_ADDRESS_ENV))
        and aws_runtime.TRACE_HEADER_ENV in environ
    )


def from_config(config: Any, environ: Optional[Mapping[str, str]] = None) -> Optional["XRayTracer"]:
    return XRayTracer(environ) if wanted(config, environ) else None


class RequestTrace:
    """The subsegments of one request. Nested calls nest (per thread); a finished
    outermost one joins the request's segment, or on Lambda, which keeps the segment
    itself, is sent at once as a child of Lambda's segment."""

    def __init__(self, daemon: xray.Daemon, trace_id: str, parent_id: Optional[str],
                 segment: Optional[xray.Entity] = None):
        self.daemon, self.trace_id, self.parent_id, self.segment = daemon, trace_id, parent_id, segment
        self._open = threading.local()  # the calls in progress on each thread
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def subsegment(self, name: str, **metadata: Any) -> Iterator[xray.Entity]:
        stack: list[xray.Entity] = self._open.__dict__.setdefault("stack", [])
        span = xray.Entity(name, "remote")
        for key, value in metadata.items():
            span.put_metadata(key, value, "stratus")
        stack.append(span)
        try:
            yield span
        except BaseException as exc:
            if type(exc).__name__ in _EXPECTED:
                span.put_annotation("outcome", "not_found")
            else:
                span.add_exception(exc)
            raise
        finally:
            stack.pop()
            span.close()
            if stack:
                stack[-1].subsegments.append(span)
            elif self.segment is not None:
                with self._lock:
                    self.segment.subsegments.append(span)
            else:
                self.daemon.send({**span.document(), "type": "subsegment", "parent_id": self.parent_id,
                                  "trace_id": self.trace_id})


class XRayTracer:
    def __init__(self, environ: Optional[Mapping[str, str]] = None, service: str = "stratus"):
        environ = os.environ if environ is None else environ
        self.on_lambda = aws_runtime.on_lambda(environ)
        self.service = environ.get("AWS_XRAY_TRACING_NAME") or service
        self.daemon = xray.Daemon(environ.get(xray.DAEMON_ADDRESS_ENV))
        self.rate = float(environ.get(SAMPLING_RATE_ENV, "0.05"))
        self._current = threading.local()  # the segment of the request this thread serves
        self._reservoir_lock = threading.Lock()
        self._reservoir_second = -1

    # -- request contexts --------------------------------------------------------------

    def context(self, request: Any) -> Context:
        """The request's Context: an X-Ray tracer when this request is traced."""
        if self.on_lambda:
            # the runtime sets the header for each invocation
            header = xray.TraceHeader.parse(os.environ.get(aws_runtime.TRACE_HEADER_ENV))
            if not header.sampled or not header.root:
                return Context()
            return Context(tracer=RequestTrace(self.daemon, header.root, header.parent).subsegment)
        trace: Optional[RequestTrace] = getattr(self._current, "trace", None)
        return Context() if trace is None else Context(tracer=trace.subsegment)

    def sampled(self) -> bool:
        """The local rule the SDK's default was: the first request of each second, and
        `rate` of the others."""
        if self.rate >= 1:
            return True
        second = int(time.monotonic())
        with self._reservoir_lock:
            if second != self._reservoir_second:
                self._reservoir_second = second
                return True
        return random.random() < self.rate

    @contextlib.contextmanager
    def request_segment(self, request: Any) -> Iterator[Optional[xray.Entity]]:
        """A segment for one request served outside Lambda (Lambda has its own)."""
        if self.on_lambda:
            yield None
            return
        header = xray.TraceHeader.parse(request.headers.get("X-Amzn-Trace-Id"))
        if not (header.sampled if header.sampled is not None else self.sampled()):
            yield None
            return
        segment = xray.Entity(self.service)
        segment.http["request"] = {"method": request.method, "url": (request.base_url or "") + request.path}
        trace = RequestTrace(self.daemon, header.root or xray.new_trace_id(), segment.id, segment)
        self._current.trace = trace
        try:
            yield segment
        except BaseException as exc:
            segment.add_exception(exc)
            raise
        finally:
            self._current.trace = None
            segment.close()
            document = {**segment.document(), "trace_id": trace.trace_id}
            if header.parent:
                document["parent_id"] = header.parent
            self.daemon.send(document)

    # -- wrappers ----------------------------------------------------------------------

    def wrap_driver(self, driver: Any) -> "TracingDriver":
        return TracingDriver(driver)

    def wrap_cache(self, cache: Any) -> Any:
        return None if cache is None else TracingCache(cache)

    def wrap_api(self, api: Any) -> "TracedAPI":
        return TracedAPI(api, self)


class TracingDriver:
    """A StorageDriver that traces every call of the driver it wraps."""

    def __init__(self, driver: Any):
        self._driver = driver
        self.name = driver.name
        self._count = getattr(driver, "thread_request_count", None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)

    @contextlib.contextmanager
    def _trace(self, ctx: Context, call: str, path: str, **extra: Any) -> Iterator[None]:
        if self._count is None:
            with ctx.trace(f"{self.name}.{call}", path=path, **extra):
                yield
            return
        before = self._count()
        with ctx.trace(f"{self.name}.{call}", path=path, **extra) as span:
            try:
                yield
            finally:
                if span is not None:  # the S3 requests this call made
                    span.put_metadata("requests", self._count() - before, "stratus")

    def get_content(self, ctx: Context, path: str) -> bytes:
        with self._trace(ctx, "get_content", path):
            return self._driver.get_content(ctx, path)

    def put_content(self, ctx: Context, path: str, content: bytes) -> None:
        with self._trace(ctx, "put_content", path, size=len(content)):
            return self._driver.put_content(ctx, path, content)

    def reader(self, ctx: Context, path: str, offset: int = 0) -> BinaryIO:
        with self._trace(ctx, "reader", path, offset=offset):
            return self._driver.reader(ctx, path, offset)

    def writer(self, ctx: Context, path: str, append: bool = False) -> Any:
        with self._trace(ctx, "writer", path, append=append):
            return TracingWriter(self, ctx, path, self._driver.writer(ctx, path, append))

    def stat(self, ctx: Context, path: str) -> Any:
        with self._trace(ctx, "stat", path):
            return self._driver.stat(ctx, path)

    def list(self, ctx: Context, path: str) -> list[str]:
        with self._trace(ctx, "list", path):
            return self._driver.list(ctx, path)

    def move(self, ctx: Context, source: str, dest: str) -> None:
        with self._trace(ctx, "move", source, dest=dest):
            return self._driver.move(ctx, source, dest)

    def delete(self, ctx: Context, path: str) -> None:
        with self._trace(ctx, "delete", path):
            return self._driver.delete(ctx, path)

    def redirect_url(self, ctx: Context, method: str, path: str, expiry_seconds: int) -> Optional[str]:
        with self._trace(ctx, "redirect_url", path, method=method):
            return self._driver.redirect_url(ctx, method, path, expiry_seconds)

    def walk(self, ctx: Context, path: str) -> Iterator[Any]:
        with self._trace(ctx, "walk", path):
            return self._driver.walk(ctx, path)


class TracingWriter:
    """Traces the writer calls that reach storage; write() only buffers or streams."""

    def __init__(self, driver: TracingDriver, ctx: Context, path: str, writer: Any):
        self._driver, self._ctx, self._path, self._writer = driver, ctx, path, writer

    @property
    def size(self) -> int:
        return self._writer.size

    def write(self, data: bytes) -> int:
        return self._writer.write(data)

    def close(self) -> None:
        with self._driver._trace(self._ctx, "writer.close", self._path):
            self._writer.close()

    def commit(self) -> None:
        with self._driver._trace(self._ctx, "writer.commit", self._path, size=self._writer.size):
            self._writer.commit()

    def cancel(self) -> None:
        with self._driver._trace(self._ctx, "writer.cancel", self._path):
            self._writer.cancel()


class TracingCache:
    """A blob descriptor cache (or one repository's view of it) whose calls are traced."""

    def __init__(self, cache: Any, repository: Optional[str] = None):
        self._cache = cache
        self._repository = repository

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)

    def _trace(self, ctx: Context, call: str, digest: Any) -> Any:
        extra = {"repository": self._repository} if self._repository else {}
        return ctx.trace(f"cache.{call}", digest=str(digest), **extra)

    def stat(self, ctx: Context, digest: Any) -> Any:
        with self._trace(ctx, "stat", digest):
            return self._cache.stat(ctx, digest)

    def set_descriptor(self, ctx: Context, digest: Any, descriptor: Any) -> None:
        with self._trace(ctx, "set_descriptor", digest):
            return self._cache.set_descriptor(ctx, digest, descriptor)

    def clear(self, ctx: Context, digest: Any) -> None:
        with self._trace(ctx, "clear", digest):
            return self._cache.clear(ctx, digest)

    def repository_scoped(self, name: str) -> "TracingCache":
        return TracingCache(self._cache.repository_scoped(name), name)


class TracedAPI:
    """The RegistryAPI with a segment around each request served outside Lambda."""

    def __init__(self, api: Any, tracer: XRayTracer):
        self._api = api
        self._tracer = tracer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def handle(self, request: Any) -> Any:
        with self._tracer.request_segment(request) as segment:
            response = self._api.handle(request)
            if segment is not None:
                segment.http["response"] = {"status": response.status}
                segment.fault = response.status >= 500
                segment.error = 400 <= response.status < 500
            return response
