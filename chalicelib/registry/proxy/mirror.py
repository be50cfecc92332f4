"""The pull-through cache: repositories whose name falls under a mirrored prefix are
filled from their upstream on first pull and served from our storage afterwards.

What is stored is exactly what a push would store (manifest blobs, revision links, tag
links, layer links, blob data), so a cached repository is an ordinary one to every
other part of Stratus, to garbage collection and to registry:2 reading the same tree.
Beside it, `_proxy/tags/<tag>/validated` records when a tag was last checked upstream
(registry:2 ignores `_` folders it does not know).
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, NoReturn, Optional, Union
from urllib.parse import urljoin, urlsplit

from ...config import ProxyUpstream
from ...context import Context
from ...descriptor import BlobDescriptor
from ...digest import Digest, DigestError
from ...storage import PathNotFoundError, StorageError, paths
from ..errors import BlobUnknownError, ManifestInvalidError, ManifestUnknownError
from ..manifest_types import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST, parse_manifest
from ..uploads import now_rfc3339
from .errors import UpstreamContentError, UpstreamUnavailableError
from .lease import DEFAULT_TTL, Held, Leases
from .upstream import Upstream, UpstreamStatusError, UpstreamUnavailable, pull_scope

if TYPE_CHECKING:
    from ..registry import Repository

log = logging.getLogger("stratus.proxy")

ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))
MAX_MANIFEST = 4 << 20
# A blob up to this size is read whole and verified before the client gets a byte, so
# a corrupt one is refused with an OCI error; a larger one is streamed (below).
BUFFERED_BLOB = 4 << 20
PIECE = 1 << 20
# How long a pull waits for another pull of the same blob (in this process, or holding
# the lease elsewhere) to store it.
FOLLOW_TIMEOUT = 600.0
# How often a pull waiting on another process's fetch looks for the blob in storage
# (and for the lease having expired).
POLL_INTERVAL = 0.5
DOCKER_HUB_HOSTS = ("registry-1.docker.io", "index.docker.io", "docker.io", "registry.hub.docker.com")


@dataclass
class Fetched:
    """An uncached blob as fetched: its descriptor, and the bytes for a GET (None for HEAD)."""

    descriptor: BlobDescriptor
    body: Union[None, bytes, Iterator[bytes]]


@dataclass
class Handoff:
    """A blob too large to copy into storage within one function invocation: its size,
    and where a client can read it meanwhile without our credentials (None when the
    upstream serves it only to an authenticated caller)."""

    size: int
    url: Optional[str]


@dataclass
class Busy:
    """Another process (function instance) is fetching the blob and it was not stored
    within the wait the caller allowed."""


class Flights:
    """One fetch per blob at a time in this process: the first caller fetches, the
    others wait for it to finish and then read what it stored."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, threading.Event] = {}

    def begin(self, key: str) -> tuple[threading.Event, bool]:
        with self._lock:
            event = self._active.get(key)
            if event is not None:
                return event, False
            event = self._active[key] = threading.Event()
            return event, True

    def end(self, key: str, event: threading.Event) -> None:
        with self._lock:
            if self._active.get(key) is event:
                del self._active[key]
        event.set()


class Turn:
    """This process's fetch of one blob: the in-process flight it leads and the
    cross-process lease it holds; ended once, whichever way the fetch ends."""

    def __init__(self, flights: Flights, key: str, event: threading.Event):
        self.flights = flights
        self.key = key
        self.event = event
        self.held: Optional[Held] = None

    def end(self) -> None:
        if self.held is not None:
            self.held.release()
            self.held = None
        self.flights.end(self.key, self.event)


# One for the whole process, not one per registry: an adapter that builds its api lazily
# may build several under concurrent first requests (all over the same storage), and
# they must still share fetches. A digest names the same bytes in every storage.
FLIGHTS = Flights()


class Mirror:
    """One upstream and the repositories it serves."""

    def __init__(self, config: ProxyUpstream):
        self.config = config
        self.prefix = config.prefix
        self.ttl = config.ttl
        self.upstream = Upstream(config.remoteurl, config.username, config.password,
                                 password_parameter=config.passwordparameter)
        self.docker_hub = (urlsplit(config.remoteurl).hostname or "") in DOCKER_HUB_HOSTS

    def covers(self, name: str) -> bool:
        return name.startswith(self.prefix)

    def remote_name(self, name: str) -> str:
        """The upstream's name for our repository: the prefix dropped, and Docker Hub's
        official images under library/ as docker itself asks for them."""
        remote = name[len(self.prefix):]
        if self.docker_hub and "/" not in remote:
            remote = "library/" + remote
        return remote


class Proxies:
    """Every configured upstream; a repository is mirrored by the longest prefix it matches."""

    def __init__(self, upstreams: list[ProxyUpstream]):
        self.mirrors = sorted((Mirror(u) for u in upstreams), key=lambda m: len(m.prefix), reverse=True)
        self.flights = FLIGHTS
        self._leases: Optional[Leases] = None

    def mirror_for(self, name: str) -> Optional[Mirror]:
        for mirror in self.mirrors:
            if mirror.covers(name):
                return mirror
        return None

    def repository(self, repo: "Repository") -> Optional["ProxiedRepository"]:
        mirror = self.mirror_for(repo.name)
        if mirror is None:
            return None
        if self._leases is None:  # the registry's driver and cache, known from its first repository
            proxy = repo.registry.options.proxy
            ttl = proxy.leasettl if proxy is not None else DEFAULT_TTL
            self._leases = Leases(repo.registry.driver, repo.registry.cache, ttl)
        return ProxiedRepository(repo, mirror, self.flights, self._leases)


class ProxiedRepository:
    """The pull side of a mirrored repository: tags, manifests and blobs filled from upstream."""

    def __init__(self, repo: "Repository", mirror: Mirror, flights: Flights, leases: Leases):
        self.repo = repo
        self.mirror = mirror
        self.flights = flights
        self.leases = leases
        self.remote = mirror.remote_name(repo.name)
        self.scope = pull_scope(self.remote)
        self.driver = repo.registry.driver

    # -- tags ------------------------------------------------------------------------------

    def _validated_path(self, tag: str) -> str:
        return f"{paths.repository(self.repo.name)}/_proxy/tags/{tag}/validated"

    def _fresh(self, ctx: Context, tag: str) -> bool:
        if self.mirror.ttl <= 0:
            return False
        try:
            validated = float(self.driver.get_content(ctx, self._validated_path(tag)).decode())
        except (PathNotFoundError, ValueError, UnicodeDecodeError):
            return False
        return 0 <= time.time() - validated < self.mirror.ttl

    def _mark_validated(self, ctx: Context, tag: str) -> None:
        try:
            self.driver.put_content(ctx, self._validated_path(tag), f"{time.time():.3f}".encode())
        except StorageError as exc:  # only costs an early re-validation
            log.warning("could not record the validation of %s:%s: %s", self.repo.name, tag, exc)

    def resolve_tag(self, ctx: Context, tag: str) -> Digest:
        """The digest the tag names: ours while fresh, else as the upstream says now,
        asked with a conditional HEAD; ours again when the upstream cannot be asked."""
        try:
            local: Optional[Digest] = self.repo.tags.get(ctx, tag)
        except ManifestUnknownError:
            local = None
        if local is not None and self._fresh(ctx, tag):
            return local
        headers = {"Accept": ACCEPT}
        if local is not None:
            headers["If-None-Match"] = f'"{local}"'
        path = f"/v2/{self.remote}/manifests/{tag}"
        try:
            response = self.mirror.upstream.request("HEAD", path, self.scope, headers)
        except (UpstreamUnavailable, UpstreamStatusError) as exc:
            return self._stale(local, f"{self.repo.name}:{tag}", exc)
        if response.status == 304 and local is not None:
            self._mark_validated(ctx, tag)
            return local
        if response.status == 404 or (response.status in (401, 403) and local is None):
            raise ManifestUnknownError({"tag": tag, "upstream": response.status})
        if response.status != 200:  # a refusal of what we cached (credentials rotated ...) keeps it
            return self._stale(local, f"{self.repo.name}:{tag}", UpstreamStatusError(response.status, path))
        digest = self._digest_header(response.headers.get("Docker-Content-Digest"))
        try:
            if digest is None:  # some registries name it only on GET
                digest = self._fetch_manifest(ctx, path)
            elif not self.repo.manifests.exists(ctx, digest):
                self._fetch_manifest(ctx, f"/v2/{self.remote}/manifests/{digest}", digest)
        except (UpstreamUnavailable, UpstreamStatusError) as exc:
            return self._stale(local, f"{self.repo.name}:{tag}", exc)
        if digest != local:
            self.repo.tags.tag(ctx, tag, digest)
        self._mark_validated(ctx, tag)
        return digest

    @staticmethod
    def _stale(local: Optional[Digest], what: str, exc: Exception) -> Digest:
        if local is None:
            raise UpstreamUnavailableError({"reason": str(exc)[:300]}) from None
        log.warning("serving cached %s: the upstream could not be asked (%s)", what, exc)
        return local

    @staticmethod
    def _digest_header(value: Optional[str]) -> Optional[Digest]:
        try:
            return Digest.parse(value) if value else None
        except DigestError:
            return None

    def tags(self, ctx: Context) -> Optional[list[str]]:
        """The upstream's tags, or None when it cannot say (the caller lists ours)."""
        try:
            response = self.mirror.upstream.request("GET", f"/v2/{self.remote}/tags/list", self.scope)
        except (UpstreamUnavailable, UpstreamStatusError):
            return None
        if response.status != 200:
            return None
        try:
            tags = json.loads(response.data).get("tags") or []
        except (ValueError, AttributeError):
            return None
        return sorted({t for t in tags if isinstance(t, str)})

    # -- manifests ---------------------------------------------------------------------------

    def ensure_manifest(self, ctx: Context, digest: Digest) -> None:
        """The manifest `digest` stored here, fetched from upstream unless it already is."""
        if self.repo.manifests.exists(ctx, digest):
            return
        try:
            self._fetch_manifest(ctx, f"/v2/{self.remote}/manifests/{digest}", digest)
        except (UpstreamUnavailable, UpstreamStatusError) as exc:
            raise UpstreamUnavailableError({"reason": str(exc)[:300]}) from None

    def _fetch_manifest(self, ctx: Context, path: str, expected: Optional[Digest] = None) -> Digest:
        response = self.mirror.upstream.request("GET", path, self.scope, {"Accept": ACCEPT}, stream=True)
        try:
            status = response.status
            body = response.read(MAX_MANIFEST + 1) if status == 200 else b""
        finally:
            response.close()
        if status in (401, 403, 404):
            raise ManifestUnknownError({"upstream": status})
        if status != 200:
            raise UpstreamStatusError(status, path)
        if len(body) > MAX_MANIFEST:
            raise ManifestInvalidError(f"the upstream's manifest exceeds {MAX_MANIFEST} bytes")
        if expected is None:
            named = self._digest_header(response.headers.get("Docker-Content-Digest"))
            expected = named or Digest.from_bytes(body)
        if expected.algorithm.from_bytes(body) != expected:
            raise UpstreamContentError({"digest": str(expected)})
        manifest = parse_manifest(body, response.headers.get("Content-Type"))
        descriptor = BlobDescriptor(digest=expected, size=len(body), media_type=manifest.media_type)
        self.repo.registry.blobs.put(ctx, expected, body, manifest.media_type)
        self.repo.revisions.link(ctx, descriptor, verify=False)
        if manifest.subject is not None:
            self.repo.referrers.add(ctx, manifest.subject.digest, expected, manifest)
        return expected

    # -- blobs --------------------------------------------------------------------------------

    def _linked_here(self, ctx: Context, digest: Digest) -> bool:
        try:
            self.repo.blobs.stat(ctx, digest)
            return True
        except BlobUnknownError:
            return False

    def blob(self, ctx: Context, digest: Digest, head: bool) -> Optional[Fetched]:
        """None when the blob is (now) in our storage, linked here; else what the
        upstream gave. Concurrent GETs of one blob fetch it once: in this process
        (Flights), and across processes (the lease)."""
        if self._linked_here(ctx, digest):
            return None
        path = f"/v2/{self.remote}/blobs/{digest}"
        if head:
            return Fetched(self._upstream_descriptor(ctx, digest, path), None)
        turn = self._lead(ctx, digest, path, None)
        if turn is None:
            return None
        assert isinstance(turn, Turn)  # no wait limit: never Busy
        return self._fetch(ctx, digest, path, turn)

    def fill(self, ctx: Context, digest: Digest, max_size: Optional[int] = None,
             wait: Optional[float] = None) -> Union[None, Handoff, Busy]:
        """Store the blob here, sending no byte anywhere else: None once it is stored,
        a Handoff (nothing stored) when the upstream's copy is larger than max_size,
        Busy when another process is copying it and it was not stored within wait."""
        if self._linked_here(ctx, digest):
            return None
        path = f"/v2/{self.remote}/blobs/{digest}"
        key = str(digest)
        if max_size is not None:
            if self._link_stored(ctx, digest, path):
                return None
            if self.leases.busy(ctx, key):  # a copy runs elsewhere: wait for it, start none
                if self._await_stored(ctx, digest, path, wait):
                    return None
                if self.leases.busy(ctx, key):
                    return Busy()
                # its holder died (the lease expired) or gave up: this request goes on
            size = self._upstream_descriptor(ctx, digest, path).size
            if size > max_size:
                return Handoff(size, self._handoff_url(path))
        turn = self._lead(ctx, digest, path, wait)
        if not isinstance(turn, Turn):
            return turn
        fetched = self._fetch(ctx, digest, path, turn)
        if not isinstance(fetched.body, bytes) and fetched.body is not None:
            for _piece in fetched.body:  # the stream stores the blob as it is read
                pass
        return None

    def _lead(self, ctx: Context, digest: Digest, path: str, wait: Optional[float]) -> Union[None, Busy, Turn]:
        """This process's turn to fetch the blob (flight led, lease held), or None once
        it is stored, or Busy when wait ran out first. In-process followers wait for
        their leader; the process's leader waits for the lease's holder elsewhere,
        polling storage, and takes the lease over if its holder dies."""
        key = str(digest)
        deadline = time.monotonic() + (FOLLOW_TIMEOUT if wait is None else wait)
        for _ in range(2):  # a second turn leads if the first fetch failed
            if self._link_stored(ctx, digest, path):
                return None
            event, leader = self.flights.begin(key)
            if not leader:
                event.wait(max(0.0, deadline - time.monotonic()))
                if self._linked_here(ctx, digest):
                    return None
                if time.monotonic() >= deadline:
                    break
                continue
            turn = Turn(self.flights, key, event)
            try:
                while True:
                    # checked again once leading: a fetch that ended between our first
                    # look and now has stored the blob (else every late caller would fetch)
                    if self._poll_stored(ctx, digest, path):
                        turn.end()
                        return None
                    turn.held = self.leases.acquire(ctx, key)
                    if turn.held is not None:
                        if self._poll_stored(ctx, digest, path):  # stored as the last holder let go
                            turn.end()
                            return None
                        return turn
                    left = deadline - time.monotonic()
                    if left <= 0:
                        turn.end()
                        return Busy() if wait is not None else self._unfinished(key)
                    time.sleep(min(POLL_INTERVAL, left))
            except BaseException:
                turn.end()
                raise
        if wait is not None:
            return Busy()
        return self._unfinished(key)

    @staticmethod
    def _unfinished(key: str) -> NoReturn:
        raise UpstreamUnavailableError({"digest": key, "reason": "the fetch of this blob did not finish"})

    def _poll_stored(self, ctx: Context, digest: Digest, path: str) -> bool:
        """Whether the blob is in storage now (stored by anyone), linked here if so."""
        try:
            self.repo.registry.blobs.stat_now(ctx, digest)
        except BlobUnknownError:
            return False
        return self._linked_here(ctx, digest) or self._link_stored(ctx, digest, path)

    def _await_stored(self, ctx: Context, digest: Digest, path: str, wait: Optional[float]) -> bool:
        """Whether the blob was stored within wait; False early once nobody holds its lease."""
        deadline = time.monotonic() + (FOLLOW_TIMEOUT if wait is None else wait)
        while not self._poll_stored(ctx, digest, path):
            left = deadline - time.monotonic()
            if left <= 0 or not self.leases.busy(ctx, str(digest)):
                return self._poll_stored(ctx, digest, path)  # stored just before it let go?
            time.sleep(min(POLL_INTERVAL, left))
        return True

    def _handoff_url(self, path: str) -> Optional[str]:
        """Where the upstream's bytes can be read without our credentials: the blob
        store it redirects to (a CDN or presigned URL, as Docker Hub and GHCR answer),
        or its own URL when it asks nobody for credentials."""
        upstream = self.mirror.upstream
        # a HEAD first: registries redirect it as they redirect a GET, and it moves no bytes
        for method in ("HEAD", "GET"):
            try:
                response = upstream.request(method, path, self.scope, stream=True, follow_redirects=False)
            except (UpstreamUnavailable, UpstreamStatusError):
                return None
            try:
                location = response.headers.get("Location")
                if response.status in (301, 302, 303, 307, 308) and location:
                    return urljoin(upstream.url + path, location)
                if response.status != 200:
                    return None
                if upstream.anonymous:
                    return upstream.url + path
            finally:
                response.close()  # a GET's body is not read: the connection cannot be reused
        return None

    def _upstream_descriptor(self, ctx: Context, digest: Digest, path: str) -> BlobDescriptor:
        try:
            response = self.mirror.upstream.request("HEAD", path, self.scope)
        except (UpstreamUnavailable, UpstreamStatusError) as exc:
            raise UpstreamUnavailableError({"reason": str(exc)[:300]}) from None
        if response.status != 200:
            raise BlobUnknownError({"digest": str(digest), "upstream": response.status})
        length = response.headers.get("Content-Length")
        return BlobDescriptor(digest=digest, size=int(length) if length and length.isdigit() else 0)

    def _link_stored(self, ctx: Context, digest: Digest, path: str) -> bool:
        """A blob another repository already brought in is linked here, once the
        upstream confirms this repository has it (a digest alone opens nothing)."""
        try:
            descriptor = self.repo.registry.blobs.stat_now(ctx, digest)
        except BlobUnknownError:
            return False
        try:
            self._upstream_descriptor(ctx, digest, path)
        except UpstreamUnavailableError:
            return False
        self.repo.blobs.link(ctx, descriptor)
        return True

    def _fetch(self, ctx: Context, digest: Digest, path: str, turn: Turn) -> Fetched:
        key = turn.key
        try:
            response = self.mirror.upstream.request("GET", path, self.scope, stream=True)
        except (UpstreamUnavailable, UpstreamStatusError) as exc:
            turn.end()
            raise UpstreamUnavailableError({"reason": str(exc)[:300]}) from None
        if response.status != 200:
            response.drain_conn()
            response.release_conn()
            turn.end()
            raise BlobUnknownError({"digest": key, "upstream": response.status})
        length_text = response.headers.get("Content-Length")
        length = int(length_text) if length_text and length_text.isdigit() else None
        if length is not None and length <= BUFFERED_BLOB:
            try:
                body = response.read(length + 1)
                response.release_conn()
                descriptor = BlobDescriptor(digest=digest, size=len(body))
                if len(body) != length or digest.algorithm.from_bytes(body) != digest:
                    raise UpstreamContentError({"digest": key})
                self.repo.registry.blobs.put(ctx, digest, body, "application/octet-stream")
                self.repo.blobs.link(ctx, descriptor)
                log.info("proxy: cached %s for %s (%d bytes)", key, self.repo.name, len(body))
                return Fetched(descriptor, body)
            finally:
                turn.end()
        descriptor = BlobDescriptor(digest=digest, size=length if length is not None else -1)
        return Fetched(descriptor, self._stream(ctx, digest, response, length, turn))

    def _stream(self, ctx: Context, digest: Digest, response, length: Optional[int],
                turn: Turn) -> Iterator[bytes]:
        """The upstream's bytes to the client as they arrive, written to a staging file
        and hashed on the way; moved to the blob's path only if they match. The last
        piece is held back until then: a client never receives a whole corrupt blob,
        its connection breaks instead."""
        name = self.repo.name
        key = turn.key
        staging = uuid.uuid4().hex
        data_path = paths.upload_data(name, staging)
        stored = False
        writer = None
        try:
            # startedat lets upload purging remove a staging file a crash left behind
            self.driver.put_content(ctx, paths.upload_started_at(name, staging), now_rfc3339().encode())
            writer = self.driver.writer(ctx, data_path)
            hasher = hashlib.new(digest.algorithm.value)
            received = 0
            held: Optional[bytes] = None
            for piece in response.stream(PIECE):
                hasher.update(piece)
                writer.write(piece)
                received += len(piece)
                if held is not None:
                    yield held
                held = piece
            if hasher.hexdigest() != digest.hex or (length is not None and received != length):
                log.error("proxy: upstream sent %d bytes for %s that do not match it; not stored", received, key)
                raise UpstreamContentError({"digest": key})
            writer.commit()
            writer.close()
            writer = None
            descriptor = BlobDescriptor(digest=digest, size=received)
            self.repo.registry.blobs.move_into_place(ctx, data_path, descriptor)
            self.repo.blobs.link(ctx, descriptor)
            stored = True
            log.info("proxy: cached %s for %s (%d bytes)", key, name, received)
            if held is not None:
                yield held
        finally:
            if writer is not None:
                writer.cancel()
            if stored:
                response.release_conn()
            else:  # cut short: unread bytes would poison the pooled connection
                response.close()
            turn.end()
            self._remove_staging(ctx, staging, stored)

    def _remove_staging(self, ctx: Context, staging: str, stored: bool) -> None:
        try:
            self.driver.delete(ctx, paths.upload_dir(self.repo.name, staging))
        except PathNotFoundError:
            pass
        except StorageError as exc:
            log.warning("proxy: staging %s left for upload purging (stored=%s): %s", staging, stored, exc)
