"""One upstream fetch per blob across processes and function instances: a lease.

The in-process single-flight (mirror.Flights) makes one fetch per process; the lease
makes that one fetch per deployment. Whoever holds the lease for a digest fetches it;
everybody else polls storage for the blob and takes the lease over if its holder
stops renewing it (crashed, killed, a frozen function instance). A lease only saves
cost: correctness never depends on it (each fetch writes its own staging file and a
verified blob is moved into place idempotently), so a lease that two processes both
believe they hold (a holder paused past its expiry) costs one more fetch, no more.

Two kinds, chosen per call:

* Redis, when the blob-descriptor cache is Redis: ``SET key token NX PX ttl``; the
  holder renews with a compare-and-PEXPIRE and releases with a compare-and-DEL on its
  token, so a holder whose lease expired and was taken over can neither extend nor
  delete its successor's. Redis down -> the storage lease below.
* Storage, otherwise: an election among candidate files, built on put/list/delete
  only, so every driver (filesystem, S3, Azure, RADOS, in-memory) has it without a
  driver method of its own. A contender writes
  ``_proxy/leases/<alg>/<hex>/<token>.<expires ms>.<c|l>`` (c: candidate, l: leading),
  then lists the folder: alone, it leads; beside a live leader or a smaller token, it
  withdraws (deletes its file) and waits; beside larger tokens only, it lists again
  shortly (they are withdrawing). Nobody joins while any file is live. Two can never both lead: one that led saw no other
  file when it listed, so any other wrote after that listing and will see the leader's
  file, which stays until released. The smallest token never withdraws, so a burst of
  contenders settles on one. It needs storage that lists what it has just written
  (filesystem, AWS S3, Azure, RADOS do). Expiry is in the name (wall-clock
  milliseconds), so a listing alone tells who is alive; a renewal writes the new name
  before deleting the old. Files of a crashed holder are deleted by whoever sees them
  expired. registry:2 ignores the `_proxy` folder.

  Why not a conditional create (S3 ``If-None-Match: *``, which botocore 1.44 and moto 5.2
  support; Azure ``if_none_match="*"``; O_EXCL)? It would be a new driver method in five
  drivers, and taking over an expired lease would still need a compare-and-delete that
  not every store has; the election needs neither.
"""
from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ...context import Context
from ...storage import PathNotFoundError, StorageDriver, StorageError, paths

log = logging.getLogger("stratus.proxy")

DEFAULT_TTL = 30.0
# A contender that saw only larger tokens lists again after about this long: enough for
# those contenders to have listed and withdrawn (two storage calls each).
SETTLE = 0.05
ROUNDS = 8
CANDIDATE_TTL = 5.0
LEASES = f"{paths.ROOT}/_proxy/leases"

_RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
          "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end")
_RELEASE = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
            "return redis.call('del', KEYS[1]) else return 0 end")


class Held:
    """A lease this process holds; renewed in the background every ttl/3 until released."""

    def __init__(self, key: str, token: str, ttl: float, renew: Callable[[], bool], release: Callable[[], None]):
        self.key = key
        self.token = token
        self.ttl = ttl
        self._renew = renew
        self._release = release
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._keep, name=f"lease-{key[-12:]}", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                kept = self._renew()
            except Exception as exc:  # storage or Redis hiccup: the next turn tries again
                log.warning("proxy: could not renew the lease on %s: %s", self.key, exc)
                continue
            if not kept:
                # expired and taken over (this process was paused past ttl): the fetch
                # goes on, its result is as good as the new holder's
                self.lost = True
                log.warning("proxy: lease on %s was taken over; finishing this fetch anyway", self.key)
                return

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self._release()
        except Exception as exc:  # it expires on its own
            log.warning("proxy: could not release the lease on %s: %s", self.key, exc)


class RedisLease:
    """The lease in Redis (the blob-descriptor cache's client and outage handling)."""

    def __init__(self, call: Callable[[Callable[[Any], Any]], Any], ttl: float):
        self._call = call
        self.ttl = ttl

    @staticmethod
    def _key(key: str) -> str:
        return f"stratus::proxy::lease::{key}"

    def acquire(self, ctx: Context, key: str) -> Optional[Held]:
        token = uuid.uuid4().hex
        name, ms = self._key(key), int(self.ttl * 1000)
        if not self._call(lambda r: r.set(name, token, nx=True, px=ms)):
            return None
        return Held(key, token, self.ttl,
                    renew=lambda: bool(self._call(lambda r: r.eval(_RENEW, 1, name, token, ms))),
                    release=lambda: self._call(lambda r: r.eval(_RELEASE, 1, name, token)))

    def busy(self, ctx: Context, key: str) -> bool:
        return bool(self._call(lambda r: r.exists(self._key(key))))


@dataclass(frozen=True)
class _Entry:
    path: str
    token: str
    expires: float  # epoch seconds
    leading: bool


class StorageLease:
    """The lease as an election among files in storage (see the module's notes)."""

    def __init__(self, driver: StorageDriver, ttl: float):
        self.driver = driver
        self.ttl = ttl

    @staticmethod
    def folder(key: str) -> str:
        algorithm, _, hex_ = key.partition(":")
        return f"{LEASES}/{algorithm}/{hex_}"

    def _write(self, ctx: Context, key: str, token: str, leading: bool) -> str:
        # a candidate's file lives only as long as an election can: one left by a process
        # that died mid-election must not hold the others back for a whole ttl
        expires = int((time.time() + (self.ttl if leading else min(self.ttl, CANDIDATE_TTL))) * 1000)
        path = f"{self.folder(key)}/{token}.{expires}.{'l' if leading else 'c'}"
        self.driver.put_content(ctx, path, b"")
        return path

    def _delete(self, ctx: Context, path: str) -> None:
        try:
            self.driver.delete(ctx, path)
        except PathNotFoundError:
            pass

    def _live(self, ctx: Context, key: str) -> list[_Entry]:
        """Live entries; expired ones are deleted on the way (a crashed holder's)."""
        try:
            names = self.driver.list(ctx, self.folder(key))
        except PathNotFoundError:
            return []
        now = time.time()
        live = []
        for path in names:
            token, _, rest = path.rsplit("/", 1)[-1].partition(".")
            expires_text, _, state = rest.partition(".")
            if not expires_text.isdigit() or state not in ("c", "l"):
                continue
            entry = _Entry(path, token, int(expires_text) / 1000, state == "l")
            if entry.expires > now:
                live.append(entry)
                continue
            try:
                self._delete(ctx, path)
            except StorageError:
                pass
        return live

    def busy(self, ctx: Context, key: str) -> bool:
        """Whether anyone holds the lease or is being elected to."""
        return bool(self._live(ctx, key))

    def acquire(self, ctx: Context, key: str) -> Optional[Held]:
        # a live file, leader's or candidate's, means someone will fetch: stand back (no
        # write, the common case for a waiter), which also lets an election under way end
        # without newcomers joining it
        if self.busy(ctx, key):
            return None
        token = uuid.uuid4().hex
        mine = self._write(ctx, key, token, leading=False)
        try:
            for _ in range(ROUNDS):
                others = [e for e in self._live(ctx, key) if e.token != token]
                if not others:
                    led = self._write(ctx, key, token, leading=True)
                    self._delete(ctx, mine)
                    return self._held(ctx, key, token, led)
                if any(e.leading or e.token < token for e in others):
                    break
                time.sleep(SETTLE * (1 + random.random()))
        except BaseException:
            self._delete(ctx, mine)
            raise
        self._delete(ctx, mine)
        return None

    def _held(self, ctx: Context, key: str, token: str, path: str) -> Held:
        current = [path]

        def renew() -> bool:
            # another live leader means ours expired and was taken over
            if any(e.leading and e.token != token for e in self._live(ctx, key)):
                return False
            renewed = self._write(ctx, key, token, leading=True)
            old, current[0] = current[0], renewed
            self._delete(ctx, old)
            return True

        def release() -> None:
            for entry in self._live(ctx, key):
                if entry.token == token:
                    self._delete(ctx, entry.path)

        return Held(key, token, self.ttl, renew, release)


class Leases:
    """The lease for this registry: Redis when its descriptor cache is Redis (storage
    when Redis cannot be asked), storage otherwise."""

    def __init__(self, driver: StorageDriver, cache: Any, ttl: float = DEFAULT_TTL):
        self.storage = StorageLease(driver, ttl)
        # the Redis descriptor cache's calls (its pool, timeouts and outage cooldown)
        call = getattr(cache, "call_redis", None)
        self.redis = RedisLease(call, ttl) if callable(call) else None

    def acquire(self, ctx: Context, key: str) -> Optional[Held]:
        if self.redis is not None:
            try:
                return self.redis.acquire(ctx, key)
            except Exception as exc:  # CacheUnavailableError: degrade, as every cache user does
                log.warning("proxy: redis lease unavailable (%s); using the storage lease", exc)
        return self.storage.acquire(ctx, key)

    def busy(self, ctx: Context, key: str) -> bool:
        if self.redis is not None:
            try:
                return self.redis.busy(ctx, key)
            except Exception:
                pass
        return self.storage.busy(ctx, key)
