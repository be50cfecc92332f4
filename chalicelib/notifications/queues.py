"""Per-endpoint event queues: bounded, in memory or spooled to a directory.

A queue is drained by one thread: peek the oldest events, send them, remove them
only once the endpoint accepted them. The directory queue writes each event to its
own file before `put` returns, so events not yet delivered when `stratus serve`
stops are sent by the next process that opens the same directory.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from collections import deque
from typing import Any, Callable, Optional

log = logging.getLogger("stratus.notifications")

Item = tuple[Any, dict]  # (key to remove it by, event)


class MemoryQueue:
    def __init__(self, size: int):
        self.size = size
        self._items: deque[Item] = deque()
        self._seq = 0
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: dict) -> bool:
        """False when full: the caller drops, logs and counts; it never waits."""
        with self._cond:
            if len(self._items) >= self.size:
                return False
            self._seq += 1
            self._items.append((self._seq, event))
            self._cond.notify()
            return True

    def peek(self, limit: int, timeout: Optional[float] = None) -> list[Item]:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return list(self._items)[:limit]

    def remove(self, keys: list[Any]) -> None:
        with self._cond:
            gone = set(keys)
            self._items = deque(item for item in self._items if item[0] not in gone)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class DirectoryQueue(MemoryQueue):
    """The same queue, each event a file `<time ns>-<seq>.json` in a directory of its own.

    Each process (`stratus serve --workers N` forks N) claims a numbered slot under
    `base` by an exclusive lock on `<n>.lock`, and keeps it while it runs; a process
    started later takes the lowest slot free, with whatever an earlier one left in it."""

    def __init__(self, size: int, base: str):
        super().__init__(size)
        os.makedirs(base, exist_ok=True)
        self._lock_file, slot = _claim_slot(base)
        self.directory = os.path.join(base, str(slot))
        directory = self.directory
        os.makedirs(directory, exist_ok=True)
        for name in sorted(os.listdir(directory)):  # left by an earlier process, oldest first
            path = os.path.join(directory, name)
            if name.endswith(".tmp"):
                os.unlink(path)  # written only in part when that process stopped
                continue
            if name.endswith(".json"):
                try:
                    with open(path, "rb") as f:
                        self._items.append((name, json.load(f)))
                except (OSError, ValueError):
                    os.unlink(path)

    def put(self, event: dict) -> bool:
        with self._cond:
            if len(self._items) >= self.size:
                return False
            self._seq += 1
            name = f"{time.time_ns():020d}-{self._seq:08d}.json"
            path = os.path.join(self.directory, name)
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(event, f, ensure_ascii=False)
            os.replace(path + ".tmp", path)
            self._items.append((name, event))
            self._cond.notify()
            return True

    def release(self) -> None:
        """Give the slot up (a forked child drops the one its parent holds)."""
        self._lock_file.close()

    def remove(self, keys: list[Any]) -> None:
        super().remove(keys)
        for name in keys:
            try:
                os.unlink(os.path.join(self.directory, name))
            except FileNotFoundError:
                pass


def _claim_slot(base: str) -> tuple[Any, int]:
    import fcntl

    slot = 0
    while True:
        lock_file = open(os.path.join(base, f"{slot}.lock"), "a")
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock_file, slot
        except OSError:
            lock_file.close()
            slot += 1


def spool_in_directory(directory: str, size: int) -> Callable[[str], DirectoryQueue]:
    return lambda name: DirectoryQueue(size, os.path.join(directory, re.sub(r"[^A-Za-z0-9._-]", "_", name)))


def spool_in_redis(connect: Callable[[], Any], size: int) -> Callable[[str], "RedisQueue"]:
    return lambda name: RedisQueue(size, connect(), f"stratus:notifications:{name}")


class RedisQueue:
    """The queue as a Redis list, for `stratus serve` replicas without a shared disk.

    Any process appends at the tail; only the holder of a short lease (`<key>:lease`,
    renewed at each look) reads and removes at the head, so events go out once and in
    order, and a process that stops hands over within LEASE seconds. Redis being down
    makes `put` fail (the event is dropped and counted) and delivery wait."""

    LEASE = 5.0

    def __init__(self, size: int, client: Any, key: str):
        self.size, self.client, self.key = size, client, key
        self._lease_key, self._token = key + ":lease", uuid.uuid4().hex
        self._cond = threading.Condition()

    def __len__(self) -> int:
        try:
            return int(self.client.llen(self.key))
        except Exception:
            return 0

    def put(self, event: dict) -> bool:
        try:
            if self.client.llen(self.key) >= self.size:
                return False
            self.client.rpush(self.key, json.dumps(event, ensure_ascii=False))
        except Exception as exc:  # redis-py's errors, not imported here
            log.error("notifications: redis queue %s: %s", self.key, exc)
            return False
        with self._cond:
            self._cond.notify()
        return True

    def peek(self, limit: int, timeout: Optional[float] = None) -> list[tuple[Any, dict]]:
        try:
            if self._hold_lease():
                found = self.client.lrange(self.key, 0, limit - 1)
                if found:
                    return [(i, json.loads(item)) for i, item in enumerate(found)]
        except Exception as exc:
            log.error("notifications: redis queue %s: %s", self.key, exc)
        with self._cond:
            self._cond.wait(timeout)
        return []

    def _hold_lease(self) -> bool:
        ms = int(self.LEASE * 1000)
        if self.client.set(self._lease_key, self._token, nx=True, px=ms):
            return True
        holder = self.client.get(self._lease_key)
        if holder is not None and (holder.decode() if isinstance(holder, bytes) else holder) == self._token:
            self.client.pexpire(self._lease_key, ms)
            return True
        return False

    def remove(self, keys: list[Any]) -> None:
        # only the lease holder removes, and only from the head it looked at
        self.client.ltrim(self.key, len(keys), -1)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
