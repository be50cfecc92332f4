"""Log lines limited to one per interval: a cache outage must not log once per request."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

WARN_INTERVAL = 60.0


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        level: int = logging.WARNING,
        interval: float = WARN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._logger = logger
        self._level = level
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0
        self._lock = threading.Lock()

    def __call__(self, message: str, *args: object) -> None:
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last < self._interval:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        if suppressed:
            message += " (%d similar messages suppressed)"
            args += (suppressed,)
        self._logger.log(self._level, message, *args)
