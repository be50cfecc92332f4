"""AWS X-Ray tracing: one subsegment per storage driver call and per cache call.

Enabled by ``tracing.xray: true``, or on Lambda when the function traces
(``tracing.xray`` absent, X-Ray's daemon address and trace header present). When it
is off nothing here is imported and no layer is wrapped: the request Context keeps
its no-op tracer. When it is on:

* the storage driver and the descriptor cache are wrapped so each call runs in
  ``ctx.trace(...)``, which the request's Context maps to an X-Ray subsegment
  (named ``<driver>.<call>`` / ``cache.<call>``, with the path or digest and, for
  S3, the number of S3 requests the call made);
* on Lambda the invocation's segment is Lambda's own; a request the trace header
  does not sample gets the no-op tracer, so it costs nothing;
* elsewhere (``stratus serve``) each request gets a segment of its own, joined to
  an incoming ``X-Amzn-Trace-Id`` when there is one.

aws-xray-sdk sends documents over UDP to the daemon (``AWS_XRAY_DAEMON_ADDRESS``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any, BinaryIO, Iterator, Mapping, Optional

from . import aws_runtime
from .context import Context

log = logging.getLogger("stratus.tracing")

SAMPLING_RATE_ENV = "STRATUS_XRAY_SAMPLING_RATE"  # requests traced outside Lambda, 0..1
_EXPECTED = ("PathNotFoundError", "DescriptorNotCachedError", "BlobUnknownError")


def wanted(config: Any, environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether to trace: configured, or on a Lambda function that traces."""
    environ = os.environ if environ is None else environ
    if config.tracing.xray_configured:
        return config.tracing.xray
    return (
        aws_runtime.on_lambda(environ)
        and bool(environ.get("AWS_XRAY_DAEMON_ADDRESS"))
        and aws_runtime.TRACE_HEADER_ENV in environ
    )


def from_config(config: Any, environ: Optional[Mapping[str, str]] = None) -> Optional["XRayTracer"]:
    return XRayTracer(environ) if wanted(config, environ) else None


class XRayTracer:
    def __init__(self, environ: Optional[Mapping[str, str]] = None, service: str = "stratus"):
        environ = os.environ if environ is None else environ
        self.on_lambda = aws_runtime.on_lambda(environ)
        self._environ = dict(environ)
        self.service = environ.get("AWS_XRAY_TRACING_NAME") or service
        self._recorder: Any = None
        self._recorder_lock = threading.Lock()

    @property
    def recorder(self) -> Any:
        """The SDK's recorder, built when the first subsegment or segment needs it:
        aws-xray-sdk (with wrapt, asyncio, importlib.metadata) costs a cold start tens
        of milliseconds, which a request that calls neither storage nor a cache (GET /v2/)
        need not pay."""
        if self._recorder is None:
            with self._recorder_lock:
                if self._recorder is None:
                    self._recorder = self._build_recorder()
        return self._recorder

    def _build_recorder(self) -> Any:
        from aws_xray_sdk.core.recorder import AWSXRayRecorder
        from aws_xray_sdk.core.sampling.local.sampler import LocalSampler

        environ = self._environ
        # A recorder of our own (not the SDK's global one), configured for where we
        # run: it picks Lambda's context when LAMBDA_TASK_ROOT is set. Local rules,
        # so no thread polls X-Ray for sampling rules.
        recorder = AWSXRayRecorder()
        rate = float(environ.get(SAMPLING_RATE_ENV, "0.05"))
        # the SDK's stubs call this a _SamplingRule; it reads the documented rules document
        rules: Any = {"version": 2, "rules": [], "default": {"fixed_target": 1 if rate < 1 else 0, "rate": rate}}
        recorder.configure(
            service=self.service,
            sampler=LocalSampler(rules),
            context_missing="LOG_ERROR",
            daemon_address=environ.get("AWS_XRAY_DAEMON_ADDRESS") or "127.0.0.1:2000",
            plugins=(),
        )
        return recorder

    # -- request contexts --------------------------------------------------------------

    def context(self, request: Any) -> Context:
        """The request's Context: an X-Ray tracer when this request is traced."""
        if self.on_lambda and not aws_runtime.lambda_trace_sampled():
            return Context()
        return Context(tracer=self.subsegment)

    @contextlib.contextmanager
    def subsegment(self, name: str, **metadata: Any) -> Iterator[Any]:
        """One subsegment; yields it (or None) so the caller can add what it learns."""
        subsegment = self.recorder.begin_subsegment(name, "remote")
        if subsegment is None:  # no segment to hang it on (a request not traced)
            yield None
            return
        try:
            for key, value in metadata.items():
                subsegment.put_metadata(key, value, "stratus")
            yield subsegment
        except BaseException as exc:
            if type(exc).__name__ in _EXPECTED:
                subsegment.put_annotation("outcome", "not_found")
            else:
                import traceback

                subsegment.add_exception(exc, traceback.extract_tb(exc.__traceback__))
            raise
        finally:
            self.recorder.end_subsegment()

    @contextlib.contextmanager
    def request_segment(self, request: Any) -> Iterator[Any]:
        """A segment for one request served outside Lambda (Lambda has its own)."""
        if self.on_lambda:
            yield None
            return
        from aws_xray_sdk.core.models.trace_header import TraceHeader

        header = TraceHeader.from_header_str(request.headers.get("X-Amzn-Trace-Id"))
        sampled = header.sampled
        if sampled is None:
            sampled = self.recorder.sampler.should_trace({"service": self.service, "method": request.method,
                                                          "path": request.path})
        segment = self.recorder.begin_segment(self.service, traceid=header.root, parent_id=header.parent,
                                              sampling=1 if sampled else 0)
        try:
            segment.put_http_meta("method", request.method)
            segment.put_http_meta("url", (request.base_url or "") + request.path)
            yield segment
        finally:
            self.recorder.end_segment()

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
                segment.put_http_meta("status", response.status)
                if response.status >= 500:
                    segment.add_fault_flag()
                elif response.status >= 400:
                    segment.add_error_flag()
            return response
