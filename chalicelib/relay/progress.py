"""Progress of one blob upload in the relay's log: bytes sent, reused, and MB/s."""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("stratus.relay")

MIB = 1 << 20
EVERY = 5.0  # seconds between progress lines of one upload


class Progress:
    def __init__(self, label: str):
        self.label = label
        self.started = time.monotonic()
        self.bytes_sent = 0
        self.bytes_skipped = 0  # held by the upstream already (a resumed upload)
        self._last = self.started
        self._lock = threading.Lock()

    def sent(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n
            now = time.monotonic()
            if now - self._last < EVERY:
                return
            self._last = now
        log.info("%s: %.1f MiB sent (%.1f MB/s)", self.label, self.bytes_sent / MIB, self.rate())

    def skipped(self, n: int) -> None:
        if n > 0:
            with self._lock:
                self.bytes_skipped += n

    def rate(self) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return self.bytes_sent / elapsed / 1e6

    def done(self, digest: str, how: str) -> None:
        reused = f", {self.bytes_skipped / MIB:.1f} MiB the upstream already had" if self.bytes_skipped else ""
        log.info("%s: %s complete, %.1f MiB sent %s in %.1f s (%.1f MB/s)%s", self.label, digest,
                 self.bytes_sent / MIB, how, time.monotonic() - self.started, self.rate(), reused)
