"""A framework-neutral HTTP request and response, so every adapter shares one api.

The body of a request is a stream (server) or bytes wrapped in one (Lambda,
Functions); a response body is bytes, an iterable of bytes, or a file to send.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import BinaryIO, Iterable, Iterator, Mapping, Optional, Union
from urllib.parse import parse_qs

JSON = "application/json"


class Headers:
    """Case-insensitive, single-valued request headers (last value wins)."""

    __slots__ = ("_items",)

    def __init__(self, items: Union[Mapping[str, str], Iterable[tuple[str, str]], None] = None):
        self._items: dict[str, str] = {}
        if items is None:
            return
        pairs = items.items() if isinstance(items, Mapping) else items
        for key, value in pairs:
            self._items[key.lower()] = value

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        return self._items.get(key.lower(), default)

    def __contains__(self, key: str) -> bool:
        return key.lower() in self._items

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def items(self):
        return self._items.items()


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: Headers = field(default_factory=Headers)
    body: BinaryIO = field(default_factory=io.BytesIO)
    # None when the client sent no Content-Length (a streamed, chunked body)
    content_length: Optional[int] = None
    # scheme://host the client used, for absolute URLs when no http.host is configured
    base_url: str = ""
    remote_addr: str = ""

    @classmethod
    def from_bytes(
        cls,
        method: str,
        path: str,
        query_string: str = "",
        headers: Union[Mapping[str, str], Iterable[tuple[str, str]], None] = None,
        body: bytes = b"",
        base_url: str = "",
    ) -> "Request":
        return cls(
            method=method.upper(),
            path=path,
            query=parse_query(query_string),
            headers=Headers(headers),
            body=io.BytesIO(body),
            content_length=len(body),
            base_url=base_url,
        )

    def arg(self, name: str) -> Optional[str]:
        values = self.query.get(name)
        return values[-1] if values else None


def parse_query(query_string: str) -> dict[str, list[str]]:
    return parse_qs(query_string, keep_blank_values=True)


@dataclass
class FileBody:
    """Bytes [offset, offset+length) of an open file; adapters may sendfile it."""

    file: BinaryIO
    length: int

    def __iter__(self) -> Iterator[bytes]:
        return self.pieces(1 << 20)

    def pieces(self, size: int) -> Iterator[bytes]:
        """The bytes in pieces of at most `size`; the file is closed at the end."""
        remaining = self.length
        try:
            while remaining > 0:
                piece = self.file.read(min(size, remaining))
                if not piece:
                    break
                remaining -= len(piece)
                yield piece
        finally:
            self.file.close()

    def close(self) -> None:
        self.file.close()


Body = Union[bytes, FileBody, Iterable[bytes]]


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Body = b""

    def header(self, name: str) -> Optional[str]:
        lowered = name.lower()
        for key, value in reversed(self.headers):
            if key.lower() == lowered:
                return value
        return None

    def body_bytes(self) -> bytes:
        """The whole body in memory (for adapters that cannot stream)."""
        if isinstance(self.body, (bytes, bytearray)):
            return bytes(self.body)
        return b"".join(self.body)


def json_response(
    doc: object, headers: Iterable[tuple[str, str]] = (), head: bool = False, content_type: str = JSON
) -> Response:
    """200 with `doc` as its JSON body (none for a HEAD, whose Content-Length still counts it)."""
    body = json.dumps(doc).encode()
    return Response(
        200, [*headers, ("Content-Type", content_type), ("Content-Length", str(len(body)))], b"" if head else body
    )
