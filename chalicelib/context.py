"""The request context passed as the first argument of every storage and cache call.

It carries what a call needs to know about the request it serves (an id for logs,
a tracer for X-Ray subsegments) without any layer knowing the HTTP framework.
"""
from __future__ import annotations

import contextlib
import uuid
from typing import Any, Callable, ContextManager, Iterator, Optional


@contextlib.contextmanager
def _no_trace(name: str, **metadata: Any) -> Iterator[None]:
    yield


class Context:
    """One per request: built for every manifest GET and blob HEAD, so it costs nothing
    it does not need (the request id is made when first asked for: a uuid4 per
    request was ~6% of the server's time on small requests)."""

    __slots__ = ("_request_id", "tracer")

    def __init__(
        self, request_id: Optional[str] = None, tracer: Callable[..., ContextManager[Any]] = _no_trace
    ) -> None:
        self._request_id = request_id
        # tracer(name, **metadata) returns a context manager that records one
        # subsegment; the default costs a generator frame and nothing else.
        self.tracer = tracer

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            self._request_id = uuid.uuid4().hex
        return self._request_id

    def trace(self, name: str, **metadata: Any) -> ContextManager[Any]:
        return self.tracer(name, **metadata)


def background() -> Context:
    """A context for work that no request started (start-up, purging, GC)."""
    return Context(request_id="background")


