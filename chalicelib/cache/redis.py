"""Redis (ElastiCache) descriptor cache: one lookup shared by every process of a deployment.

Keys follow the reference registry, so a registry:2 pointed at the same database
reads what Stratus writes and vice versa:

    blobs::<digest>                        hash {digest, size, mediatype}
    repository::<name>::blobs              set of the digests linked in <name>
    repository::<name>::blobs::<digest>    hash {mediatype}: <name>'s media type

A repository-scoped hit needs all three (membership, the global descriptor, the
repository hash), so clearing the global entry hides a blob from every repository.

Redis is never a point of failure. Timeouts are short; after a connection failure
or a timeout the provider answers "unavailable" without touching the network for
`cooldown` seconds, so an outage costs one timeout per cooldown, not one per
request. A clear that fails is kept as a tombstone in this process: until it has
been replayed into Redis (before any other command, once Redis answers), stats of
that digest miss here. Other processes cannot see the tombstone; for them the
entry's TTL (base.REPOSITORY_TTL, GLOBAL_TTL) bounds how long it is believed.

Reads (the stats) go over resp.py's connections; writes, clears and the proxy's
lease over a redis-py client. Nothing is imported or fetched until the first cache
call that needs it: a Lambda instance whose first request is `GET /v2/` pays neither
for a client nor for the AUTH token's SSM or Secrets Manager read
(``STRATUS_REDIS_PASSWORD_PARAMETER``, see aws_runtime), and one that only serves
pulls never imports redis-py (~70 ms). Building a client is part of the call that
needs it, so a failure there (the parameter unreadable, say) is an outage like any
other: storage answers, and the client is built again after the cooldown.

Calls are not traced here: with X-Ray on, tracing.TracingCache wraps every
provider and records each call as a `cache.*` subsegment.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from .. import aws_runtime
from ..config import RedisConfig
from ..context import Context
from ..descriptor import OCTET_STREAM, BlobDescriptor
from ..digest import Digest
from .base import (
    GLOBAL_TTL,
    REPOSITORY_TTL,
    CacheUnavailableError,
    DescriptorNotCachedError,
    validate_descriptor,
)
from .ratelimit import RateLimitedLog

if TYPE_CHECKING:  # the clients are imported when the first call needs one
    import redis

    from . import resp

log = logging.getLogger("stratus.cache")

# Defaults for the redis.* timeouts left unset: a Redis lookup in the same VPC takes
# well under a millisecond, and a slow cache must not make a request slower than
# the storage read it was meant to save.
DEFAULT_DIAL_TIMEOUT = 0.25
DEFAULT_READ_TIMEOUT = 0.2
DEFAULT_WRITE_TIMEOUT = 0.2
DEFAULT_HEALTH_CHECK_INTERVAL = 30  # seconds idle before a pooled connection is PINGed
COOLDOWN = 1.0  # seconds without trying Redis after it failed
MAX_TOMBSTONES = 10000

T = TypeVar("T")
_Op = tuple  # ("del", key) | ("srem", key, member)


def blob_key(digest: object) -> str:
    return f"blobs::{digest}"


def repository_set_key(name: str) -> str:
    return f"repository::{name}::blobs"


def repository_blob_key(name: str, digest: object) -> str:
    return f"repository::{name}::blobs::{digest}"


def split_address(addr: str) -> tuple[str, int, bool]:
    """(host, port, tls) of `host:port`, `[v6]:port`, or a redis:// / rediss:// URL."""
    tls = False
    for scheme in ("rediss://", "redis://"):
        if addr.startswith(scheme):
            tls = scheme == "rediss://"
            addr = addr[len(scheme):].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = addr.rpartition(":")
    if not host:
        host, port = port, "6379"
    return host.strip("[]") or "localhost", int(port or 6379), tls


def address(config: RedisConfig) -> str:
    """host:port of the configuration, for logs and errors (no client needed)."""
    if not config.addr:
        raise ValueError("redis.addr is not set")
    host, port, _ = split_address(config.addr)
    return f"{host}:{port}"


def password(config: RedisConfig) -> Optional[str]:
    """redis.password, else the AUTH token named by STRATUS_REDIS_PASSWORD_PARAMETER
    (read once per process, with the function's role)."""
    if config.password:
        return config.password
    parameter = aws_runtime.redis_password_parameter()
    return aws_runtime.fetch_secret(parameter) if parameter else None


def forget_password(config: RedisConfig) -> None:
    """After Redis refused the token: read the parameter again when next connecting
    (the token was rotated; a configured redis.password cannot change)."""
    parameter = aws_runtime.redis_password_parameter()
    if parameter and not config.password:
        aws_runtime.forget_secret(parameter)


def _timeouts(config: RedisConfig) -> tuple[float, float, float]:
    """(dial, read, write) seconds, the defaults for those unset."""
    return (config.dialtimeout or DEFAULT_DIAL_TIMEOUT, config.readtimeout or DEFAULT_READ_TIMEOUT,
            config.writetimeout or DEFAULT_WRITE_TIMEOUT)


def read_client(config: RedisConfig) -> resp.ReadClient:
    """The client of the stats, over connections of its own (with a password
    parameter, the token is read now)."""
    from . import resp  # (and with it socket, select): not before a stat needs it

    if not config.addr:
        raise ValueError("redis.addr is not set")
    host, port, url_tls = split_address(config.addr)
    dial, read, write = _timeouts(config)
    return resp.ReadClient(
        host, port, tls=config.tls or url_tls, username=config.username, password=password(config), db=config.db,
        connect_timeout=dial, read_timeout=read, write_timeout=write, max_idle=config.pool.maxidle,
        # a connection idle longer may be half-open (Lambda's NAT forgets idle flows): a
        # new one costs less than the read timeout it would take to find out
        idle_timeout=config.pool.idletimeout or DEFAULT_HEALTH_CHECK_INTERVAL,
    )


def connect(config: RedisConfig) -> redis.Redis:
    """A client over its own connection pool; connections are made on first use.

    Imports redis-py and, with a password parameter, reads it: call it when the
    cache is first used, not at start-up."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if not config.addr:
        raise ValueError("redis.addr is not set")
    host, port, url_tls = split_address(config.addr)
    dial, read, write = _timeouts(config)
    kwargs: dict[str, Any] = dict(
        host=host,
        port=port,
        db=config.db,
        username=config.username,
        password=password(config),
        socket_connect_timeout=dial,
        # redis-py has one timeout for both directions
        socket_timeout=max(read, write),
        # one immediate retry on a fresh connection: a pooled socket may have died
        # while a Lambda instance was frozen
        retry=Retry(NoBackoff(), 1),
        health_check_interval=int(config.pool.idletimeout or DEFAULT_HEALTH_CHECK_INTERVAL),
        decode_responses=True,
        protocol=2,
        driver_info=None,  # no CLIENT SETINFO round trips on connect
    )
    if config.tls or url_tls:
        # ElastiCache in-transit encryption: verified against the system's CAs
        kwargs["connection_class"] = redis.SSLConnection
        kwargs["ssl_cert_reqs"] = "required"
    if config.pool.maxactive:
        pool: redis.ConnectionPool = redis.BlockingConnectionPool(
            max_connections=config.pool.maxactive, timeout=max(read, write), **kwargs
        )
    else:
        pool = redis.ConnectionPool(**kwargs)
    return redis.Redis(connection_pool=pool)


_shared: dict[tuple, "RedisBlobDescriptorCache"] = {}
_shared_lock = threading.Lock()


def _descriptor(digest: Digest, fields: list[Any]) -> BlobDescriptor:
    stored_digest, size, media_type = fields
    # "size" was once "length": an entry without it is a miss, which migrates it
    if stored_digest is None or size is None:
        raise DescriptorNotCachedError(str(digest))
    try:
        return BlobDescriptor(digest=digest, size=int(size), media_type=media_type or OCTET_STREAM)
    except ValueError:
        raise DescriptorNotCachedError(str(digest)) from None


class RedisBlobDescriptorCache:
    shared = True  # one database for every process; DELETE and gc clear it

    def __init__(
        self,
        config: RedisConfig,
        global_ttl: float = GLOBAL_TTL,
        repository_ttl: float = REPOSITORY_TTL,
        cooldown: float = COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ):
        """Nothing is connected, imported or fetched here: the clients are built by
        the first call that needs each. After Redis refuses the credentials both are
        built again (after the cooldown), with a rotated AUTH token read again."""
        self.address = address(config)
        self._config = config
        self._client: Optional[redis.Redis] = None
        self._reader: Optional[resp.ReadClient] = None
        self.global_ttl = global_ttl
        self.repository_ttl = repository_ttl
        self._cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._connect_lock = threading.Lock()  # building may wait on SSM: not under _lock
        self._down_until = 0.0
        self._down = False
        self._tombstones: dict[tuple[str, str], list[_Op]] = {}
        self._distrust_until = 0.0
        self._recovered_log = RateLimitedLog(log, logging.INFO)

    @property
    def client(self) -> redis.Redis:
        """The redis-py client (writes, clears, the lease), built on first use."""
        return self._client or self._build("_client", connect)

    @property
    def reader(self) -> resp.ReadClient:
        """The client of the stats, built on first use."""
        return self._reader or self._build("_reader", read_client)

    def _build(self, attribute: str, build: Callable[[RedisConfig], T]) -> T:
        with self._connect_lock:
            if getattr(self, attribute) is None:
                setattr(self, attribute, build(self._config))
            return getattr(self, attribute)

    @classmethod
    def from_config(cls, config: RedisConfig) -> "RedisBlobDescriptorCache":
        """The process's one provider (and connection pool) for this configuration.

        Adapters build the registry once per process, but a Lambda's module state
        outlives a handler rebuilt by mistake; sharing here keeps one pool either way.
        """
        key = dataclasses.astuple(config)  # every field, the pool's included
        with _shared_lock:
            cache = _shared.get(key)
            if cache is None:
                cache = _shared[key] = cls(config)
                log.info(
                    "blob descriptor cache: redis at %s (db %d, tls %s)", cache.address, config.db, config.tls
                )
            return cache

    # -- BlobDescriptorService (global) -------------------------------------------------

    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor:
        d = str(digest)
        [fields] = self._read(("HMGET", blob_key(d), "digest", "size", "mediatype"))
        self._check_tombstones(("", d))
        return _descriptor(digest, fields)

    def set_descriptor(self, ctx: Context, digest: Digest, descriptor: BlobDescriptor) -> None:
        validate_descriptor(digest, descriptor)

        def write(r: redis.Redis) -> None:
            pipe = r.pipeline(transaction=True)
            self._write_global(pipe, digest, descriptor)
            pipe.execute()

        self._call(write)

    def clear(self, ctx: Context, digest: Digest) -> None:
        self._invalidate(("", str(digest)), [("del", blob_key(digest))])

    def repository_scoped(self, name: str) -> "RepositoryScopedRedisCache":
        return RepositoryScopedRedisCache(self, name)

    def close(self) -> None:
        if self._client is not None:  # never built: nothing to close
            self._client.connection_pool.disconnect()
        if self._reader is not None:
            self._reader.close()

    # -- internals shared with the repository scope --------------------------------------

    def _write_global(self, pipe: Any, digest: Digest, descriptor: BlobDescriptor) -> None:
        key = blob_key(digest)
        pipe.hset(key, mapping={"digest": str(descriptor.digest), "size": descriptor.size})
        # like the reference: the first media type recorded for a blob stays
        pipe.hsetnx(key, "mediatype", descriptor.media_type)
        pipe.pexpire(key, int(self.global_ttl * 1000))

    def call_redis(self, operation: Callable[[redis.Redis], T]) -> T:
        """operation(client) with this cache's client and outage handling (timeouts, the
        cooldown, CacheUnavailableError): for others that keep state in the same Redis
        (the proxy's lease). Wrappers (tracing, metrics) pass it through."""
        return self._call(operation)

    def _call(self, operation: Callable[[redis.Redis], T]) -> T:
        tombstones = self._enter()
        client = self._built(lambda: self.client)
        import redis  # in sys.modules once a client exists: a dictionary lookup

        try:
            if tombstones:
                self._replay(client, tombstones)
            result = operation(client)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            # a busy pool is not an outage
            down = not str(exc).startswith("No connection available")
            raise self._failed(exc, down, refused=isinstance(exc, redis.AuthenticationError)) from exc
        except redis.RedisError as exc:  # OOM, READONLY, LOADING, a key of the wrong type
            raise self._failed(exc, down=False) from exc
        self._answered()
        return result

    def _read(self, *commands: resp.Command) -> list[Any]:
        """The replies to read-only commands, sent in one round trip."""
        if self._enter():  # clears failed earlier: replayed first, through the client
            self._call(lambda client: None)
        reader = self._built(lambda: self.reader)
        from . import resp  # in sys.modules once a reader exists

        try:
            replies = reader.execute(*commands)
        except resp.AuthenticationError as exc:
            raise self._failed(exc, down=True, refused=True) from exc
        except resp.ReplyError as exc:
            raise self._failed(exc, down=False) from exc
        except OSError as exc:  # refused, reset, timed out, TLS
            raise self._failed(exc, down=True) from exc
        self._answered()
        return replies

    def _enter(self) -> dict[tuple[str, str], list[_Op]]:
        """The clears to replay before the call; raises while cooling down."""
        with self._lock:
            if self._clock() < self._down_until:
                raise CacheUnavailableError(f"redis at {self.address} is unavailable (retrying shortly)")
            return dict(self._tombstones)

    def _built(self, build: Callable[[], T]) -> T:
        try:
            return build()
        except Exception as exc:  # redis-py missing, the AUTH token's parameter unreadable
            self._mark_down()
            raise CacheUnavailableError(f"redis at {self.address}: no client: {exc}") from exc

    def _failed(self, exc: Exception, down: bool, refused: bool = False) -> CacheUnavailableError:
        if down:
            self._mark_down()
        if refused:
            self._drop_clients()
        return CacheUnavailableError(f"redis at {self.address}: {exc}")

    def _answered(self) -> None:
        if self._down:
            with self._lock:
                was_down, self._down = self._down, False
            if was_down:
                self._recovered_log("redis at %s reachable again; descriptors served from it", self.address)

    def _drop_clients(self) -> None:
        """Credentials refused: both clients are built again, the token read again."""
        with self._connect_lock:
            client, reader = self._client, self._reader
            self._client = self._reader = None
            forget_password(self._config)
        if client is not None:
            client.connection_pool.disconnect()
        if reader is not None:
            reader.close()

    def _mark_down(self) -> None:
        with self._lock:
            self._down_until = self._clock() + self._cooldown
            self._down = True

    def _invalidate(self, scope: tuple[str, str], ops: list[_Op]) -> None:
        def run(r: redis.Redis) -> None:
            pipe = r.pipeline(transaction=True)
            _queue(pipe, ops)
            pipe.execute(raise_on_error=False)

        try:
            self._call(run)
        except CacheUnavailableError:
            self._remember(scope, ops)
            raise

    def _remember(self, scope: tuple[str, str], ops: list[_Op]) -> None:
        with self._lock:
            if len(self._tombstones) >= MAX_TOMBSTONES and scope not in self._tombstones:
                # too many to remember: believe no entry until every one written
                # before now has expired
                self._tombstones.clear()
                self._distrust_until = self._clock() + max(self.global_ttl, self.repository_ttl)
                log.warning("redis cache: too many failed clears; not trusting cached descriptors for now")
                return
            self._tombstones[scope] = ops

    def _replay(self, client: redis.Redis, tombstones: dict[tuple[str, str], list[_Op]]) -> None:
        pipe = client.pipeline(transaction=True)
        for ops in tombstones.values():
            _queue(pipe, ops)
        # a key of the wrong type must not wedge the replay (and with it every call);
        # such a key is never read as an entry anyway
        pipe.execute(raise_on_error=False)
        with self._lock:
            for scope, ops in tombstones.items():
                if self._tombstones.get(scope) is ops:
                    del self._tombstones[scope]
        log.info("redis cache: replayed %d clears that failed while it was unavailable", len(tombstones))

    def _check_tombstones(self, *scopes: tuple[str, str]) -> None:
        """After a read: _call replays tombstones first, so one left here means the
        replay has not happened (another thread's clear failed meanwhile)."""
        if not self._tombstones and not self._distrust_until:
            return
        with self._lock:
            if self._clock() < self._distrust_until or any(s in self._tombstones for s in scopes):
                raise DescriptorNotCachedError(scopes[0][1])


def _queue(pipe: Any, ops: list[_Op]) -> None:
    for op in ops:
        if op[0] == "del":
            pipe.delete(op[1])
        else:
            pipe.srem(op[1], op[2])


class RepositoryScopedRedisCache:
    shared = True

    def __init__(self, parent: RedisBlobDescriptorCache, name: str):
        self._parent = parent
        self.name = name
        self._set_key = repository_set_key(name)

    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor:
        d = str(digest)

        member, fields, media_type = self._parent._read(
            ("SISMEMBER", self._set_key, d),
            ("HMGET", blob_key(d), "digest", "size", "mediatype"),
            ("HGET", repository_blob_key(self.name, d), "mediatype"),
        )
        self._parent._check_tombstones((self.name, d), ("", d))
        # no repository hash: its TTL ran out, so storage is asked again
        if not member or media_type is None:
            raise DescriptorNotCachedError(d)
        found = _descriptor(digest, fields)
        return BlobDescriptor(digest=digest, size=found.size, media_type=media_type or found.media_type)

    def set_descriptor(self, ctx: Context, digest: Digest, descriptor: BlobDescriptor) -> None:
        validate_descriptor(digest, descriptor)
        parent = self._parent

        def write(r: redis.Redis) -> None:
            pipe = r.pipeline(transaction=True)
            pipe.sadd(self._set_key, str(digest))
            # the set lives while the repository is in use; each member is only
            # believed while its repository hash lives
            pipe.pexpire(self._set_key, int(parent.global_ttl * 1000))
            parent._write_global(pipe, digest, descriptor)
            key = repository_blob_key(self.name, digest)
            pipe.hset(key, "mediatype", descriptor.media_type)
            pipe.pexpire(key, int(parent.repository_ttl * 1000))
            pipe.execute()

        parent._call(write)

    def clear(self, ctx: Context, digest: Digest) -> None:
        d = str(digest)
        ops: list[_Op] = [("srem", self._set_key, d), ("del", repository_blob_key(self.name, d))]
        self._parent._invalidate((self.name, d), ops)
