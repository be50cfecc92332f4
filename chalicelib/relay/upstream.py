"""The upstream registry as the relay talks to it: one connection pool, absolute URLs,
and the rewriting of the Locations it answers with.

urllib3 (already in every Stratus environment with boto3 or requests) gives pooled,
streaming requests: a body is sent from a file or a generator as it is read, and a
response is read in pieces, so nothing here holds a blob in memory.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Protocol, Union
from urllib.parse import urlsplit

import urllib3

log = logging.getLogger("stratus.relay")

# Headers that describe one connection, not the message (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})
# The relay's server sends its own Date and Server.
RESPONSE_DROP = HOP_BY_HOP | {"date", "server"}
# A forwarded request also gets its own Host and body framing from the relay.
REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "expect"}
# What an API Gateway REST API turns a Lambda proxy response's WWW-Authenticate into.
REMAPPED_CHALLENGE = "x-amzn-remapped-www-authenticate"
# One piece of a request body sent to the socket at a time (urllib3's default is 16 KiB).
SEND_BLOCK = 1 << 20


class UpstreamError(Exception):
    """The upstream could not be reached (status 503) or broke off an exchange (502)."""

    def __init__(self, status: int, message: str, cause: BaseException):
        super().__init__(f"{message}: {cause}")
        self.status = status
        self.message = message
        self.cause = cause


@dataclass(frozen=True)
class Origin:
    """scheme://host[:port] and the path prefix (an API Gateway stage, say) of a registry."""

    origin: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> "Origin":
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"upstream must be an http(s) URL, got {url!r}")
        prefix = parts.path.rstrip("/")
        if prefix.endswith("/v2"):  # a pasted registry API URL names the registry
            prefix = prefix[:-3]
        return cls(f"{parts.scheme}://{parts.netloc}", prefix)


Body = Union[None, bytes, Any, Iterable[bytes]]


class Answer(Protocol):
    """What the upstream answered, as the client is told it: a urllib3 response, or
    senders.Made for a blob an earlier completion already made."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> urllib3.HTTPHeaderDict: ...
    @property
    def data(self) -> bytes: ...


class Upstream:
    def __init__(self, url: str, pool_size: int = 32, connect_timeout: float = 10.0,
                 read_timeout: float = 300.0, verify_tls: bool = True, ca_file: Optional[str] = None):
        self.base = Origin.parse(url)
        tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED" if verify_tls else "CERT_NONE"}
        if ca_file:
            tls["ca_certs"] = ca_file
        self.http = urllib3.PoolManager(
            num_pools=16, maxsize=pool_size, block=False, retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            blocksize=SEND_BLOCK, **tls,
        )
        if not verify_tls:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    @property
    def display(self) -> str:
        return self.base.origin + self.base.prefix

    def url(self, path_and_query: str) -> str:
        """The upstream URL of a /v2/... path (with its query)."""
        return self.base.origin + self.base.prefix + path_and_query

    def absolute(self, location: str) -> str:
        """A Location the upstream answered with, as an absolute URL."""
        if location.startswith(("http://", "https://")):
            return location
        return self.base.origin + location

    def relay_path(self, location: str) -> Optional[str]:
        """The /v2/... path and query of a Location into the upstream, or None for a
        Location elsewhere (a presigned storage URL), which the client must follow as is."""
        if location.startswith("/"):
            path = location
        else:
            parts = urlsplit(location)
            if f"{parts.scheme}://{parts.netloc}".lower() != self.base.origin.lower():
                return None
            path = location[len(self.base.origin):] or "/"
        if self.base.prefix and path.startswith(self.base.prefix + "/"):
            path = path[len(self.base.prefix):]
        return path if path.startswith("/v2/") or path == "/v2" else None

    def request(
        self,
        method: str,
        url: str,
        headers: Optional[Mapping[str, str]] = None,
        body: Body = None,
        stream: bool = False,
        chunked: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """One exchange; UpstreamError when the upstream cannot be reached or breaks it off.

        With stream=True the caller reads the body (and releases the connection)."""
        try:
            return self.http.request(
                method, url, headers=dict(headers or {}), body=body, chunked=chunked,
                preload_content=not stream, decode_content=False, redirect=False, retries=False,
            )
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError,
                urllib3.exceptions.NameResolutionError) as exc:
            raise UpstreamError(503, "upstream registry unreachable", exc) from None
        except urllib3.exceptions.HTTPError as exc:
            raise UpstreamError(502, "upstream registry broke off the exchange", exc) from None
        except OSError as exc:
            raise UpstreamError(502, "upstream registry broke off the exchange", exc) from None


def response_headers(response: Answer, drop: frozenset = frozenset()) -> list[tuple[str, str]]:
    """The upstream's end-to-end headers, a REST API's remapped challenge restored."""
    headers = [(k, v) for k, v in response.headers.items() if k.lower() not in RESPONSE_DROP | drop]
    names = {k.lower() for k, _ in headers}
    if "www-authenticate" not in names:
        headers = [("WWW-Authenticate", v) if k.lower() == REMAPPED_CHALLENGE else (k, v) for k, v in headers]
    return headers
