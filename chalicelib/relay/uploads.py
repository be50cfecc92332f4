"""The client uploads the relay carries: bytes in from the client, pieces out to the upstream.

A client upload is the upstream upload the relay opened for it (its Location, with the
host swapped for the relay's, is what the client sees). Its bytes are spooled into
pieces (pieces.py) and sent by a sender (senders.py): direct-upload parts, several at
once, when the upstream offers the extension and the blob fills at least one part;
chunked PATCHes otherwise. Before any piece is sent, its end and prefix hash go to the
journal, so a relay started later can resume the upstream upload (resume.py).
"""
from __future__ import annotations

import hmac
import logging
import os
import secrets
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..registry.errors import RangeInvalidError
from .journal import Entry, Journal
from .pieces import Piece, Spooler
from .progress import Progress
from .resume import Candidate, Matcher, candidates
from .senders import ChunkedSender, DirectSender, Target, UpstreamAnswer
from .upstream import Answer, Upstream, UpstreamError

log = logging.getLogger("stratus.relay")

MIB = 1 << 20
IDLE = 3600.0  # an upload nobody touched for this long is forgotten (its journal stays)


@dataclass(frozen=True)
class RelaySettings:
    state_dir: Path
    part_size: int = 16 * MIB  # direct-upload parts
    chunk_size: int = 16 * MIB  # chunked PATCHes, further capped by OCI-Chunk-Max-Length
    parallel: int = 4  # parts of one upload in flight at once
    senders: int = 16  # threads sending pieces, for all uploads together


class Uploads:
    """The uploads in progress, by the id the client sees."""

    def __init__(self, upstream: Upstream, settings: RelaySettings):
        self.upstream = upstream
        self.settings = settings
        self.journal = Journal(settings.state_dir / "journal")
        self.spool = _spool_dir(settings.state_dir / "spool")
        self.pool = ThreadPoolExecutor(max_workers=settings.senders, thread_name_prefix="relay-send")
        self._sessions: dict[str, "Session"] = {}
        self._lock = threading.Lock()

    def open(self, name: str, client_path: str, target: Target, hashing: bool = True) -> "Session":
        session = Session(self, name, client_path, target, hashing)
        with self._lock:
            self._forget_idle()
            self._sessions[session.id] = session
        return session

    def get(self, name: str, upload_id: str, state: Optional[str]) -> Optional["Session"]:
        with self._lock:
            session = self._sessions.get(upload_id)
        if session is None or session.name != name:
            return None
        # the upload's own token, as the upstream issued it: another one is not this client's
        if not hmac.compare_digest((state or "").encode(), (session.state or "").encode()):
            return None
        return session

    def close(self, session: "Session") -> None:
        with self._lock:
            self._sessions.pop(session.id, None)
        session.discard()

    def _forget_idle(self) -> None:
        now = time.monotonic()
        for session in [s for s in self._sessions.values() if now - s.last_used > IDLE and not s.lock.locked()]:
            self._sessions.pop(session.id, None)
            session.discard()


class Session:
    def __init__(self, uploads: Uploads, name: str, client_path: str, target: Target, hashing: bool):
        self.uploads = uploads
        self.upstream = uploads.upstream
        self.settings = uploads.settings
        self.name = name
        self.client_path = client_path
        self.id = target.uuid
        self.state = _query_value(client_path, "_state")
        self.target = target
        self.hashing = hashing
        self.direct_offered = target.direct_kind is not None
        size = self.settings.part_size if self.direct_offered else min(
            self.settings.chunk_size, target.chunk_max or self.settings.chunk_size)
        self.spooler = Spooler(uploads.spool, self.id[:40], size, start=target.offset, hashing=hashing)
        self.sender: Union[None, ChunkedSender, DirectSender] = None
        self.entry: Optional[Entry] = None
        self.matcher: Optional[Matcher] = None
        self._resume_checked = not hashing or target.offset > 0
        self._held: list[Piece] = []
        self._futures: list[Future] = []
        self._slots = threading.Semaphore(self.settings.parallel)
        self._error: Optional[BaseException] = None
        self.lock = threading.Lock()
        self.last_used = time.monotonic()
        self.progress = Progress(f"{name} upload {self.id[:8]}")

    @property
    def received(self) -> int:
        return self.spooler.offset

    # -- what the client's requests do ------------------------------------------------

    def check_start(self, content_range: Optional[tuple[int, int]], length: Optional[int]) -> None:
        """A chunk must start where the bytes so far end (416 with our Range otherwise)."""
        if content_range is None:
            return
        start, end = content_range
        if length is not None and length != end - start + 1:
            raise RangeInvalidError(f"Content-Range covers {end - start + 1} bytes, body has {length}")
        if start != self.received:
            raise RangeInvalidError(f"chunk starts at {start}, the upload holds {self.received} bytes")

    def absorb(self, body: Any, length: Optional[int], auth: dict[str, str]) -> None:
        """Take a request body, sending whole pieces as they fill."""
        self.last_used = time.monotonic()
        if not self._resume_checked and length != 0:
            self._resume_checked = True
            self._look_for_resume(auth)
        for piece in self.spooler.feed(body, length):
            self._dispatch(piece, auth)
            self._raise_error()

    def end_of_chunk(self, auth: dict[str, str]) -> None:
        """After a PATCH: in chunked mode what is left goes now (no part to fill)."""
        if self.matcher is None and self._chunked_mode() and self.spooler.pending >= self.target.chunk_min:
            partial = self.spooler.take_partial()
            if partial is not None:
                self._send(partial, auth)
        self.wait()

    def finish(self, digest: str, auth: dict[str, str]) -> Answer:
        """After the PUT's body: send the rest, wait, complete upstream; its response."""
        if self.matcher is not None:
            # the blob ends here: a candidate whose boundary is its end (an upload that
            # got every byte but not the PUT) is judged before the rest are let go
            self.matcher.update(self.spooler.marks, self.spooler.offset)
            self.matcher.finish(self.spooler.offset)
            self._decide(self.matcher, auth)
        partial = self.spooler.take_partial()
        if partial is not None:
            self._send(partial, auth)
        self.wait()
        if self.sender is None:  # an empty blob: nothing went through any sender
            self.sender = ChunkedSender(self.upstream, self.target, self.settings.chunk_size)
        response = self.sender.complete(digest, auth)
        if response.status == 201:
            self.progress.done(digest, self.sender.describe())
        if response.status == 201 or response.status == 400:
            # done, or refused for good (a digest mismatch): the journal is of no more use
            if self.entry is not None:
                self.entry.remove()
        return response

    def wait(self) -> None:
        futures, self._futures = self._futures, []
        for future in futures:
            future.exception()
        self._raise_error()

    def discard(self) -> None:
        self.wait_quietly()
        if self.entry is not None:
            self.entry.close()
        self.spooler.close()
        for piece in self._held:
            piece.discard()
        self._held = []

    def wait_quietly(self) -> None:
        for future in self._futures:
            future.exception()
        self._futures = []

    # -- pieces --------------------------------------------------------------------

    def _chunked_mode(self) -> bool:
        if self.sender is not None:
            return isinstance(self.sender, ChunkedSender)
        return not self.direct_offered

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self.wait_quietly()
            raise error

    def _dispatch(self, piece: Piece, auth: dict[str, str]) -> None:
        if self.matcher is None:
            self._send(piece, auth)
            return
        self._held.append(piece)
        self.matcher.update(self.spooler.marks, self.spooler.offset)
        if self.matcher.decided:
            self._decide(self.matcher, auth)

    def _sender_for(self, piece: Piece, auth: dict[str, str]) -> Union[ChunkedSender, DirectSender]:
        if self.sender is None:
            first_full_part = (self.direct_offered and self.target.offset == 0 and piece.start == 0
                               and piece.length == self.settings.part_size)
            if first_full_part:
                sender = DirectSender(self.upstream, self.target, self.settings.part_size)
                try:
                    sender.begin(auth)
                    self.sender = sender
                except UpstreamAnswer as exc:
                    if exc.status != 405:  # advertised yet unsupported (UNSUPPORTED): chunks will do
                        raise
                    log.warning("%s: the upstream refused direct uploads; sending chunks", self.progress.label)
            if self.sender is None:
                self.sender = ChunkedSender(self.upstream, self.target, self.settings.chunk_size)
            self._open_journal()
        return self.sender

    def _open_journal(self) -> None:
        if self.entry is None and self.hashing:
            self.entry = self.uploads.journal.create(
                self.name, self.target.uuid, "direct" if self.target.direct else "chunked",
                self.target.part_size, self.target.location)
        if self.entry is not None and isinstance(self.sender, ChunkedSender):
            self.sender.on_location = self.entry.location

    def _send(self, piece: Piece, auth: dict[str, str]) -> None:
        sender = self._sender_for(piece, auth)
        if self.entry is not None:
            self.entry.boundary(piece.end, piece.sha256)  # before a byte of it leaves
        self._slots.acquire()  # at most `parallel` pieces in flight: the reader waits
        if self._error is not None:
            self._slots.release()
            piece.discard()
            self._raise_error()
        # chunked PATCHes go one at a time and in order
        if isinstance(sender, ChunkedSender) and self._futures:
            for future in self._futures:
                future.exception()
            self._futures = []
        self._futures.append(self.uploads.pool.submit(self._run, sender, piece, auth))

    def _run(self, sender: Union[ChunkedSender, DirectSender], piece: Piece, auth: dict[str, str]) -> None:
        try:
            if self._error is None:
                sender.send(piece, auth, self.progress)
        except BaseException as exc:  # reported to the client by the request that waits
            if self._error is None:
                self._error = exc
        finally:
            piece.discard()
            self._slots.release()

    # -- resuming ------------------------------------------------------------------

    def _look_for_resume(self, auth: dict[str, str]) -> None:
        found = candidates(self.upstream, self.uploads.journal, self.name, auth, self.settings.part_size)
        if found:
            log.info("%s: %d interrupted upload(s) to compare with", self.progress.label, len(found))
            self.matcher = Matcher(found)
            self.spooler.wanted = self.matcher.marks()

    def _decide(self, matcher: Matcher, auth: dict[str, str]) -> None:
        """`matcher` (self.matcher) has decided: from now on pieces are sent, not held."""
        self.matcher = None
        for candidate in matcher.ranked():
            entry = self.uploads.journal.claim(candidate.record)
            if entry is not None:  # else another session took it meanwhile
                self._continue(candidate, entry, auth)
                break
        held, self._held = self._held, []
        for index, piece in enumerate(held):
            try:
                self._send(piece, auth)
            except BaseException:
                for rest in held[index + 1:]:
                    rest.discard()
                raise

    def _continue(self, candidate: Candidate, entry: Entry, auth: dict[str, str]) -> None:
        """Send to the interrupted upload from now on; drop the one opened for this client."""
        own = self.target
        self.target = candidate.target
        if candidate.target.part_size is not None:  # direct
            self.sender = DirectSender(self.upstream, self.target, candidate.target.part_size)
        else:
            self.sender = ChunkedSender(self.upstream, self.target, self.settings.chunk_size)
        self.entry = entry
        self._open_journal()
        log.info("%s: continuing interrupted upstream upload %s: %.1f MiB it holds are not sent again%s",
                 self.progress.label, self.target.uuid, candidate.saved / MIB,
                 " (assembled already: its verification goes on)" if self.target.assembled else "")
        try:
            self.upstream.request("DELETE", own.location, headers=auth)
        except UpstreamError:
            pass  # an abandoned empty upload: the upstream purges it


def _spool_dir(root: Path) -> Path:
    """A spool directory of this process's own; those of relays no longer running go."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in root.iterdir():
        pid = old.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            # pieces a killed relay left behind are of no use: the journal says what was sent
            shutil.rmtree(old, ignore_errors=True)
    mine = root / f"{os.getpid()}-{secrets.token_hex(4)}"
    mine.mkdir(mode=0o700)
    return mine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _query_value(path: str, key: str) -> Optional[str]:
    from urllib.parse import parse_qs, urlsplit

    values = parse_qs(urlsplit(path).query, keep_blank_values=True).get(key)
    return values[-1] if values else None
