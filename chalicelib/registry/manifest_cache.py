"""Manifest bodies by digest, kept in process: content-addressed, so never stale.

A digest's bytes can never change, so a cached body is right for as long as the
manifest exists; whether it exists, and in which repository, is still asked of
storage on every request (the revision link), so a delete or a tag moved by
another process is seen at once. Bounded by bytes, least recently used first out.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional

from ..digest import Digest

DEFAULT_MAX_BYTES = 16 << 20
MAX_ENTRY_BYTES = 256 << 10  # a rare huge index is read from storage each time


class ManifestBodyCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[Digest, tuple[str, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: Digest) -> Optional[tuple[str, bytes]]:
        """(media type, body), or None when not cached."""
        with self._lock:
            item = self._items.get(digest)
            if item is not None:
                self._items.move_to_end(digest)
            return item

    def put(self, digest: Digest, media_type: str, body: bytes) -> None:
        size = len(body)
        if size > MAX_ENTRY_BYTES or size > self._max_bytes:
            return
        with self._lock:
            old = self._items.pop(digest, None)
            if old is not None:
                self._bytes -= len(old[1])
            self._items[digest] = (media_type, bytes(body))
            self._bytes += size
            while self._bytes > self._max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= len(evicted)
