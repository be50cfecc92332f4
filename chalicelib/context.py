"""The request context passed as the first argument of every storage and cache call.

It carries what a call needs to know about the request it serves (an id for logs,
a tracer for X-Ray subsegments) without any layer knowing the HTTP framework.
"""
from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator


@contextlib.contextmanager
def _no_trace(name: str, **metadata: Any) -> Iterator[None]:
    yield


@dataclass
class Context:
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # tracer(name, **metadata) returns a context manager that records one subsegment;
    # the default costs a generator frame and nothing else.
    tracer: Callable[..., ContextManager[None]] = _no_trace

    def trace(self, name: str, **metadata: Any) -> ContextManager[None]:
        return self.tracer(name, **metadata)


def background() -> Context:
    """A context for work that no request started (start-up, purging, GC)."""
    return Context(request_id="background")


