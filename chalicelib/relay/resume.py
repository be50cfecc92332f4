"""Recognising an interrupted upload in the bytes of a new one.

A client whose push was cut off (the relay killed, say) starts the blob again from
byte 0 in a new upload. The journal (journal.py) says what a previous relay sent to
which upstream upload of the same repository and the SHA-256 of every prefix it was
about to send. A candidate is worth continuing only if the upstream still has it and
holds bytes; the new bytes must then hash the same as the journal at the first
boundary at or past everything the upstream holds (`need`):

* chunked: the upstream holds [0, U) (its Range); `need` is the smallest boundary >= U.
  Matching there means the new blob's first `need` bytes are the old one's, so the
  upstream's U bytes are the new blob's too, and sending goes on from U.
* direct: the upstream holds some full parts; `need` is the end of the last of them,
  which was recorded before that part was sent. Those parts are kept; every other part
  (missing, short, or beyond) is sent again, overwriting whatever is there.
* direct, already assembled by a completion PUT (the relay died while the registry
  verified): the upload holds the whole old blob. It is continued only for a new blob of
  exactly that length whose hash matches at its end; nothing is sent, the PUT repeated.

Until every candidate has matched or failed, the new bytes are held in spooled pieces
(on disk) and nothing is sent; a mismatch sends them, in order, to the new upload.
The upstream verifies the digest at the end anyway, so a wrong guess here could cost
a failed push, never a blob with wrong bytes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from .journal import Journal, Record
from .senders import DirectSender, Target, UpstreamAnswer
from .upstream import Upstream, UpstreamError

log = logging.getLogger("stratus.relay")

MAX_CANDIDATES = 8  # journals of one repository looked at per new upload, newest first


@dataclass
class Candidate:
    record: Record
    target: Target  # the upstream upload, as it stands now
    need: int  # the new bytes must match the journal up to here
    checks: dict[int, str]  # journal boundaries up to need: end -> sha256 of [0, end)
    exact: bool = False  # the new blob must also end at `need` (an assembled upload)

    @property
    def saved(self) -> int:
        """Bytes that will not be sent again if this one is continued."""
        if self.target.part_size is not None:  # direct
            return len(self.target.have_parts) * self.target.part_size
        return self.target.offset


def candidates(upstream: Upstream, journal: Journal, name: str, auth: dict[str, str],
               part_size: int) -> list[Candidate]:
    """Interrupted uploads of repository `name` (journals nobody holds) worth comparing with."""
    found = []
    for record in journal.records(name)[:MAX_CANDIDATES]:
        try:
            candidate = _candidate(upstream, record, name, auth, part_size)
        except (UpstreamError, UpstreamAnswer, ValueError, KeyError) as exc:
            log.info("%s: cannot resume upload %s: %s", name, record.uuid, exc)
            continue
        if candidate is not None:
            found.append(candidate)
    return found


def _candidate(upstream: Upstream, record: Record, name: str, auth: dict[str, str],
               part_size: int) -> Optional[Candidate]:
    response = upstream.request("GET", upstream.absolute(record.location), headers=auth)
    if response.status in (404, 416):  # gone (purged, cancelled, completed): forget it
        record.path.unlink(missing_ok=True)
        return None
    if response.status != 204:
        return None
    target = Target.from_session(upstream, name, record.uuid, response)
    if record.mode == "direct":
        if record.part_size != part_size:
            return None
        target.part_size = part_size
        try:
            stored = DirectSender(upstream, target, part_size).uploaded(auth)
        except UpstreamAnswer as exc:
            if exc.status != 400 or target.offset not in record.boundaries:
                raise
            # 400: a completion PUT already assembled the parts (the relay died while the
            # registry verified them); the upload holds the whole old blob, Range says how
            # long. Only a new blob of exactly that length and those bytes can use it.
            target.assembled = True
            target.have_parts = set(range(1, -(-target.offset // part_size) + 1))
            checks = {end: digest for end, digest in record.boundaries.items() if end <= target.offset}
            return Candidate(record, target, target.offset, checks, exact=True)
        target.have_parts = {n for n, size in stored.items() if size == part_size}
        if not target.have_parts:
            return None
        need = max(target.have_parts) * part_size
        if need not in record.boundaries:
            return None
    else:
        if target.offset == 0:
            return None
        ends = [end for end in record.boundaries if end >= target.offset]
        if not ends:
            return None  # the upstream holds bytes the journal never announced
        need = min(ends)
    checks = {end: digest for end, digest in record.boundaries.items() if end <= need}
    return Candidate(record, target, need, checks)


class Matcher:
    """Follows the prefix hashes of a new upload against its candidates."""

    def __init__(self, found: list[Candidate]):
        self.live = list(found)
        self.matched: list[Candidate] = []

    def marks(self) -> set[int]:
        return {end for c in self.live for end in c.checks}

    def update(self, marks: dict[int, str], received: int) -> None:
        for candidate in list(self.live):
            failed = any(
                (end <= received and marks.get(end) != digest) for end, digest in candidate.checks.items()
            )
            if failed or (candidate.exact and received > candidate.need):
                self.live.remove(candidate)
            elif received >= candidate.need and not candidate.exact:
                self.live.remove(candidate)
                self.matched.append(candidate)

    def finish(self, received: int) -> None:
        """The new blob ended (after a last update): an exact candidate matches if it ends
        here too; candidates that needed more bytes do not match."""
        self.matched += [c for c in self.live if c.exact and received == c.need]
        self.live = []

    @property
    def decided(self) -> bool:
        return not self.live

    def ranked(self) -> list[Candidate]:
        return sorted(self.matched, key=lambda c: c.saved, reverse=True)
