"""Serving the relay over HTTP: granian running the registry's WSGI adapter.

chalicelib/adapters/server.py's `wsgi_app` turns WSGI into the api's Request/Response, which
the relay speaks, so the relay reuses it. The relay picks granian itself rather than
going through `serve()`: a relay must forward repeated headers (skopeo and docker send
one Accept line per manifest type) and a WSGI server joins them into one value, as
PEP 3333 asks, where the registry's other adapters keep only the last.
"""
from __future__ import annotations

import logging
import socket
from typing import Callable, Optional

# server's own guard: granian starts each environ from os.environ, so an HTTP_PROXY of the
# relay's environment would otherwise be forwarded upstream as a request header
from ..adapters.server import _without_process_headers, wsgi_app

log = logging.getLogger("stratus.relay")

_APP: Optional[Callable] = None


def _loader(target: str) -> Callable:
    if _APP is None:
        raise RuntimeError("serve() builds the relay's app before granian loads it")
    return _APP  # built before granian forks its worker


def _check_free(host: str, port: int) -> None:
    """A port in use (another relay, a registry on 5000) said in one line; granian would
    panic with a Rust backtrace."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"stratus relay: cannot listen on {host}:{port}: {exc.strerror}") from None


def serve(relay, addr: str, threads: int) -> None:
    global _APP
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.log import LogLevels

    host, _, port = addr.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    _check_free(host, int(port))
    _APP = _without_process_headers(wsgi_app(relay))
    server = Granian(
        "stratus-relay",
        address=host,
        port=int(port),
        interface=Interfaces.WSGI,
        http=HTTPModes.http1,
        # one worker: the uploads in progress and their spooled pieces live in one process
        workers=1,
        blocking_threads=threads,
        # not warning: granian warns about more threads than 2 x cores + 1, which is what
        # a relay waiting on the network wants
        log_level=LogLevels.error,
    )
    server.serve(target_loader=_loader)
