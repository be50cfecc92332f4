"""Sending pieces of a blob to an upstream upload, and completing it.

Two ways, chosen per upload by what the upstream offers:

* ChunkedSender: spec-compliant chunked PATCHes (Content-Range, Content-Length) no
  longer than the upstream's OCI-Chunk-Max-Length, one after another (the spec needs
  them in order), then `PUT ?digest=`.
* DirectSender: the direct-to-storage extension (docs/direct-uploads.md): part URLs
  asked for in batches, parts PUT straight to storage, several at once, then
  `PUT ?digest=`, repeated while the registry answers 202 (verification continuing).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import quote

from .pieces import Piece
from .progress import Progress
from .upstream import Answer, Upstream, UpstreamError, response_headers

log = logging.getLogger("stratus.relay")

DIRECT_HEADER = "Stratus-Direct-Upload"
MAX_PARTS = 10_000
URL_BATCH = 100  # the most part URLs one request may ask for
PART_ATTEMPTS = 3
URL_MARGIN = 60.0  # seconds before its expiry a part URL is no longer used
VERIFY_ROUNDS = 1000  # PUT ?digest= answered 202 at most this many times in a row
# Seconds between repeats of a completion a gateway gave up on (about 2 minutes in all).
GATEWAY_RETRIES = (2, 4, 8, 15, 15, 15, 15, 15, 15, 15)


class UpstreamAnswer(Exception):
    """The upstream refused a request made for the client: its answer goes back as is."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes):
        super().__init__(f"upstream answered {status}")
        self.status, self.headers, self.body = status, headers, body


def answer(response: Answer) -> UpstreamAnswer:
    return UpstreamAnswer(response.status, response_headers(response), response.data or b"")


def with_query(url: str, query: str) -> str:
    return url + ("&" if "?" in url else "?") + query


def parse_range_end(value: Optional[str]) -> int:
    """Bytes an upload holds, from its `Range: 0-<last>` (registry:2 says 0-0 when empty)."""
    if not value:
        return 0
    try:
        last = int(value.split("-", 1)[1])
    except (IndexError, ValueError):
        return 0
    return last + 1 if last > 0 else 0


@dataclass
class Target:
    """The upstream upload the bytes of a client upload go to."""

    name: str
    uuid: str
    location: str  # absolute; the upstream's latest
    chunk_max: Optional[int]
    chunk_min: int
    direct_kind: Optional[str]  # offered by the upstream ("s3-multipart", "azure-blocks")
    offset: int = 0  # chunked: bytes the upstream holds
    part_size: Optional[int] = None  # set once the upload is in direct mode
    have_parts: set[int] = field(default_factory=set)  # direct: full parts already stored
    assembled: bool = False  # direct: a completion PUT already put the parts together

    @property
    def direct(self) -> bool:
        return self.part_size is not None

    @classmethod
    def from_session(cls, upstream: Upstream, name: str, uuid: str, response: Answer) -> "Target":
        """From a 202 (POST) or 204 (GET) upload-session response."""
        maximum = response.headers.get("OCI-Chunk-Max-Length")
        minimum = response.headers.get("OCI-Chunk-Min-Length")
        return cls(
            name=name, uuid=uuid, location=upstream.absolute(response.headers["Location"]),
            chunk_max=int(maximum) if maximum and maximum.isdigit() and int(maximum) > 0 else None,
            chunk_min=int(minimum) if minimum and minimum.isdigit() else 0,
            direct_kind=response.headers.get(DIRECT_HEADER) or None,
            offset=parse_range_end(response.headers.get("Range")),
        )


def _auth(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() == "authorization"}


class ChunkedSender:
    def __init__(self, upstream: Upstream, target: Target, chunk_size: int):
        self.upstream = upstream
        self.target = target
        self.chunk_size = min(chunk_size, target.chunk_max or chunk_size)
        # called with each new Location (the journal keeps it)
        self.on_location: Optional[Callable[[str], None]] = None

    def describe(self) -> str:
        return f"in chunked PATCHes of up to {self.chunk_size / (1 << 20):g} MiB"

    def send(self, piece: Piece, auth: dict[str, str], progress: Progress) -> None:
        """PATCH the piece's bytes the upstream does not hold yet, in chunks."""
        start = max(piece.start, self.target.offset)
        if start < piece.start:
            raise RuntimeError("piece sent out of order")
        if start >= piece.end:
            progress.skipped(piece.length)
            return
        progress.skipped(start - piece.start)
        while start < piece.end:
            end = min(piece.end, start + self.chunk_size)
            body = piece.reader(start, end)
            try:
                response = self.upstream.request(
                    "PATCH", self.target.location,
                    headers={**_auth(auth), "Content-Type": "application/octet-stream",
                             "Content-Range": f"{start}-{end - 1}", "Content-Length": str(end - start)},
                    body=body,
                )
            finally:
                body.close()
            if response.status != 202:
                raise answer(response)
            self.target.location = self.upstream.absolute(response.headers.get("Location") or self.target.location)
            self.target.offset = end
            if self.on_location:
                self.on_location(self.target.location)
            progress.sent(end - start)
            start = end

    def complete(self, digest: str, auth: dict[str, str]) -> Answer:
        return complete(self.upstream, self.target, digest, auth)


class DirectSender:
    def __init__(self, upstream: Upstream, target: Target, part_size: int):
        self.upstream = upstream
        self.target = target
        self.part_size = part_size
        self._urls: dict[int, tuple[str, str, dict, float]] = {}
        self._lock = threading.Lock()

    def parts_request(self, first: int, last: int, auth: dict[str, str], propose: bool) -> dict:
        query = f"parts={first}-{last}" + (f"&partsize={self.part_size}" if propose else "")
        response = self.upstream.request(
            "POST", with_query(self.target.location, query), headers={**_auth(auth), "Content-Length": "0"}, body=b"",
        )
        if response.status != 200:
            raise answer(response)
        doc = json.loads(response.data)
        if int(doc["partSize"]) != self.part_size:  # an upstream that ignores the part size asked for
            raise UpstreamAnswer(502, [("Content-Type", "application/json")], _error_body(
                f"upstream chose parts of {doc['partSize']} bytes, the relay asked for {self.part_size}"))
        expires = _parse_time(doc.get("expires"))
        for part in doc.get("parts", []):
            self._urls[int(part["number"])] = (part.get("method", "PUT"), part["url"], part.get("headers") or {}, expires)
        return doc

    def begin(self, auth: dict[str, str]) -> None:
        """Put the upload in direct mode (it must be empty) with our part size."""
        self.parts_request(1, URL_BATCH, auth, propose=True)
        self.target.part_size = self.part_size

    def uploaded(self, auth: dict[str, str]) -> dict[int, int]:
        """Part number -> size of the parts the upstream already holds."""
        doc = self.parts_request(1, 1, auth, propose=False)
        return {int(p["number"]): int(p["size"]) for p in doc.get("uploaded", [])}

    def _url(self, number: int, auth: dict[str, str]) -> tuple[str, str, dict]:
        with self._lock:
            entry = self._urls.get(number)
            if entry is None or entry[3] - URL_MARGIN < time.time():
                last = min(MAX_PARTS, number + URL_BATCH - 1)
                self.parts_request(number, last, auth, propose=False)
                entry = self._urls[number]
            return entry[0], entry[1], entry[2]

    def describe(self) -> str:
        return f"as direct-upload parts of {self.part_size / (1 << 20):g} MiB ({self.target.direct_kind})"

    def send(self, piece: Piece, auth: dict[str, str], progress: Progress) -> None:
        number = piece.start // self.part_size + 1
        if piece.start % self.part_size or number > MAX_PARTS:
            raise RuntimeError(f"part at {piece.start} does not line up with parts of {self.part_size}")
        if number in self.target.have_parts and (piece.length == self.part_size or self.target.assembled):
            progress.skipped(piece.length)
            return
        body = piece.reader(piece.start, piece.end)
        try:
            for attempt in range(PART_ATTEMPTS):
                method, url, headers = self._url(number, auth)
                body.rewind()
                try:
                    response = self.upstream.request(
                        method, url, headers={**headers, "Content-Length": str(piece.length)}, body=body,
                    )
                except UpstreamError as exc:
                    if attempt + 1 == PART_ATTEMPTS:
                        raise
                    log.warning("part %d of %s: %s; sending it again", number, self.target.uuid, exc)
                    continue
                if 200 <= response.status < 300:
                    progress.sent(piece.length)
                    return
                if response.status == 403:  # an expired URL: ask for a fresh one
                    with self._lock:
                        self._urls.pop(number, None)
                if response.status < 500 and response.status != 403 or attempt + 1 == PART_ATTEMPTS:
                    raise UpstreamAnswer(502, [("Content-Type", "application/json")],
                                         _storage_error(number, response.status, response.data))
        finally:
            body.close()

    def complete(self, digest: str, auth: dict[str, str]) -> Answer:
        return complete(self.upstream, self.target, digest, auth)


def complete(upstream: Upstream, target: Target, digest: str, auth: dict[str, str]) -> Answer:
    """`PUT ?digest=` with no body until the upstream has decided: repeated while it answers
    202 (a direct upload still being verified), and after a gateway gave up waiting (502,
    503, 504: on Lambda the function goes on with the request) with backoff. A repeat that
    finds the upload gone asks whether the blob is there: the earlier attempt made it."""
    waits = iter(GATEWAY_RETRIES)
    retried = False
    for _ in range(VERIFY_ROUNDS):
        response = upstream.request(
            "PUT", with_query(target.location, "digest=" + quote(digest, safe=":")),
            headers={**_auth(auth), "Content-Length": "0"}, body=b"",
        )
        if response.status in (502, 503, 504):
            wait = next(waits, None)
            if wait is None:
                return response
            log.warning("%s: completing %s: the upstream answered %d; asking again in %g s",
                        target.name, digest, response.status, wait)
            time.sleep(wait)
            retried = True
            continue
        if response.status == 404 and retried:
            made = _blob_made(upstream, target, digest, auth)
            return made if made is not None else response
        if response.status != 202:
            return response
        target.location = upstream.absolute(response.headers.get("Location") or target.location)
        log.info("%s: verifying %s, %s bytes checked so far", target.name, digest,
                 response.headers.get("Stratus-Verify-Offset", "?"))
    return response


@dataclass
class Made:
    """A 201 for a blob an earlier, timed-out completion put in place."""

    status: int
    headers: Any
    data: bytes = b""


def _blob_made(upstream: Upstream, target: Target, digest: str, auth: dict[str, str]) -> Optional[Made]:
    from urllib3 import HTTPHeaderDict

    path = f"/v2/{target.name}/blobs/{digest}"
    response = upstream.request("HEAD", upstream.url(path), headers=_auth(auth))
    if response.status != 200 or response.headers.get("Docker-Content-Digest", digest) != digest:
        return None
    return Made(201, HTTPHeaderDict({"Location": upstream.url(path), "Docker-Content-Digest": digest,
                                     "Content-Length": "0"}))


def _error_body(message: str, detail: object = None) -> bytes:
    from ..api.errors import error_body

    return error_body("UNAVAILABLE", message, detail)


def _storage_error(number: int, status: int, data: Optional[bytes]) -> bytes:
    return _error_body(f"storage refused part {number} with {status}",
                       {"storage": (data or b"")[:300].decode("utf-8", "replace")})


def _parse_time(value: Optional[str]) -> float:
    from datetime import datetime

    if not value:
        return time.time() + 600
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time() + 600
