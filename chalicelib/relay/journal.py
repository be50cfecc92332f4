"""The resume journal: what the relay sent to which upstream upload, kept on disk.

One file per upstream upload, under <state>/journal/<hash of the repository>/, as
JSON lines appended while the upload goes on:

    {"name": ..., "uuid": ..., "mode": "chunked"|"direct", "part_size": ..., "location": ...}
    {"end": 16777216, "sha256": "<hex of bytes [0, 16777216) of the blob>"}
    {"location": "<the upstream's latest Location for the upload>"}

A boundary line is written *before* the bytes up to its `end` are sent, so whatever the
upstream holds after a crash (a whole chunk, part of one, some parts) lies below a
recorded boundary. A restarted relay may continue that upload for a new client upload
of the same repository only once the new bytes hash the same up to such a boundary
(resume.py): an incomplete or torn journal just means nothing is reused.

Writes are plain appends (no fsync): they survive the relay being killed, which is what
the journal is for; after a power loss a missing line again only means nothing is reused.

The relay sending to an upload holds an flock on its journal, so no other session (of
this relay or of another sharing the state directory) takes it for a candidate while it
is in use; the kernel drops the lock when the process dies, however it dies.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

log = logging.getLogger("stratus.relay")

# An upload id that can name a file (Stratus and registry:2 use UUIDs).
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
# Uploads are purged upstream after a week by default; older records can be of no use.
MAX_AGE = 7 * 24 * 3600


@dataclass
class Record:
    """A journal file read back."""

    path: Path
    name: str
    uuid: str
    mode: str
    part_size: Optional[int]
    location: str
    boundaries: dict[int, str] = field(default_factory=dict)


class Entry:
    """The open journal of one upstream upload, locked while this process sends to it."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd = fd  # holds the flock
        self._lock = threading.Lock()

    @classmethod
    def lock(cls, path: Path, create: bool = False) -> Optional["Entry"]:
        """The entry at path with its lock taken, or None when another holds it (or it is gone)."""
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(path, fd)

    def _append(self, doc: dict) -> None:
        line = (json.dumps(doc, separators=(",", ":")) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)  # one write of a short line: appended whole or not at all
            finally:
                os.close(fd)

    def boundary(self, end: int, sha256: str) -> None:
        self._append({"end": end, "sha256": sha256})

    def location(self, location: str) -> None:
        self._append({"location": location})

    def remove(self) -> None:
        """The upload is finished (or dead): its journal goes."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self.close()

    def close(self) -> None:
        """Stop sending to it: the journal stays for a later resume, unlocked."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class Journal:
    def __init__(self, root: Path):
        self.root = root

    def _dir(self, name: str) -> Path:
        return self.root / hashlib.sha256(name.encode()).hexdigest()[:24]

    def create(self, name: str, uuid: str, mode: str, part_size: Optional[int], location: str) -> Optional[Entry]:
        """A fresh journal for an upstream upload; None when its id cannot name a file."""
        if not _SAFE_ID.match(uuid):
            return None
        directory = self._dir(name)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        entry = Entry.lock(directory / f"{uuid}.jsonl", create=True)
        if entry is None:
            return None
        os.ftruncate(entry._fd, 0)
        entry._append({"name": name, "uuid": uuid, "mode": mode, "part_size": part_size, "location": location})
        return entry

    def claim(self, record: Record) -> Optional[Entry]:
        """The journal of a candidate, locked for this session; None if someone holds it."""
        return Entry.lock(record.path)

    def records(self, name: str) -> list[Record]:
        """The journals of uploads of repository `name`, newest first; stale ones removed."""
        directory = self._dir(name)
        if not directory.is_dir():
            return []
        found = []
        now = time.time()
        for path in directory.glob("*.jsonl"):
            entry = Entry.lock(path)
            if entry is None:
                continue  # being sent to right now
            try:
                if now - path.stat().st_mtime > MAX_AGE:
                    entry.remove()
                    continue
                record = _read(path)
            except OSError:
                continue
            finally:
                entry.close()
            if record is not None and record.name == name:
                found.append((path.stat().st_mtime, record))
        return [record for _, record in sorted(found, key=lambda item: item[0], reverse=True)]


def _read(path: Path) -> Optional[Record]:
    record: Optional[Record] = None
    for line in path.read_bytes().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue  # a line torn by a crash: skipped, never trusted
        if not isinstance(doc, dict):
            continue
        if record is None:
            if not all(isinstance(doc.get(k), str) for k in ("name", "uuid", "mode", "location")):
                return None
            part_size = doc.get("part_size")
            record = Record(path, doc["name"], doc["uuid"], doc["mode"],
                            part_size if isinstance(part_size, int) else None, doc["location"])
        elif isinstance(doc.get("end"), int) and isinstance(doc.get("sha256"), str):
            record.boundaries[doc["end"]] = doc["sha256"]
        elif isinstance(doc.get("location"), str):
            record.location = doc["location"]
    return record
