"""Files written across requests as staged blocks of a block blob.

A writer stages what it is given as blocks and leaves them uncommitted when it
closes; the next writer (in any process, maybe days later) reads the blob's block
list back to learn the size and to continue. ``commit()`` commits every block in
order with one Put Block List, which is atomic: readers see the old content or
the whole new file. Nothing is ever downloaded to be uploaded again.

Block ids encode their order: ``<sequence, 10 digits>-<writer nonce>`` in base64,
all the same length as Azure requires within one blob. The nonce keeps the blocks
of two writers racing on one upload apart, so a lost race shows up as a size (and
digest) mismatch rather than as one writer's bytes silently replacing the other's.

A file being written carries the metadata ``stratus_staged``; stat, readers and
move look for it (it comes free with the properties they fetch anyway) and only
then pay for the block list.
"""
from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Optional

from ..writer_state import WriterState

STAGED = "stratus_staged"  # metadata key of a blob with (possibly) uncommitted blocks
STAGED_METADATA = {STAGED: "1"}
# A file written through Put Block SAS URLs (direct.py): its part size, in metadata,
# and the nonce of its blocks, whose sequence is the part number. No writer ever
# takes this nonce, so a block list alone tells a direct file from an ordinary one.
DIRECT = "stratus_direct"
DIRECT_NONCE = "d12ec700"
BLOCK_SIZE = 8 << 20  # bytes staged per block; 50,000 blocks make a 390 GiB blob
APPEND_BLOCK_SIZE = 4 << 20  # the largest Append Block every service version takes

_ID_RE = re.compile(rb"([0-9]{10})-([0-9a-f]{8})\Z")


def block_id(sequence: int, nonce: str) -> str:
    return base64.b64encode(f"{sequence:010d}-{nonce}".encode()).decode()


def _parse(encoded: str) -> Optional[tuple[int, str]]:
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    match = _ID_RE.match(raw)
    return (int(match.group(1)), match.group(2).decode()) if match else None


def parse_block_id(encoded: str) -> Optional[int]:
    """The sequence number of one of our block ids, None for anyone else's."""
    parsed = _parse(encoded)
    return parsed[0] if parsed else None


def direct_part_number(encoded: str) -> Optional[int]:
    """The part number of a block sent to a direct part URL, None for any other block."""
    parsed = _parse(encoded)
    return parsed[0] if parsed and parsed[1] == DIRECT_NONCE else None


def writer_nonce() -> str:
    while True:
        nonce = secrets.token_hex(4)
        if nonce != DIRECT_NONCE:
            return nonce


def is_staged(metadata: Optional[dict]) -> bool:
    return metadata is not None and STAGED in {k.lower() for k in metadata}


def direct_part_size(metadata: Optional[dict]) -> Optional[int]:
    """The part size a direct file's metadata records, None for any other file."""
    for key, value in (metadata or {}).items():
        if key.lower() == DIRECT:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


@dataclass
class BlockList:
    """A block blob's blocks: what is committed and what we staged after it."""

    committed_size: int
    committed: list[tuple[str, int]] = field(default_factory=list)  # (id, size) in order
    staged: list[tuple[str, int, int]] = field(default_factory=list)  # (id, size, sequence), sorted

    @property
    def size(self) -> int:
        return self.committed_size + sum(size for _, size, _ in self.staged)

    @property
    def next_sequence(self) -> int:
        sequences = [parse_block_id(i) for i, _ in self.committed] + [s for _, _, s in self.staged]
        return max((s for s in sequences if s is not None), default=-1) + 1

    @property
    def committed_is_ours(self) -> bool:
        """Whether the committed content is exactly our blocks, so new ids can follow them.

        A blob from a single Put Blob has content but no block list; one from other
        tools may have ids of another length, which Azure would refuse next to ours.
        """
        return (
            all(parse_block_id(i) is not None for i, _ in self.committed)
            and sum(size for _, size in self.committed) == self.committed_size
        )

    def ids_in_order(self) -> list[str]:
        return [i for i, _ in self.committed] + [i for i, _, _ in self.staged]

    @property
    def empty(self) -> bool:
        return not self.committed and not self.staged and self.committed_size == 0

    @property
    def has_direct_parts(self) -> bool:
        ids = [i for i, _ in self.committed] + [i for i, _, _ in self.staged]
        return any(direct_part_number(i) is not None for i in ids)


def read_block_list(blob: Any) -> BlockList:
    """The block list of blob (raises the SDK's errors: 404, InvalidBlobType)."""
    headers: dict[str, str] = {}

    def keep_headers(response: Any, deserialized: Any, response_headers: dict) -> Any:
        headers.update(response_headers)
        return deserialized

    committed, uncommitted = blob.get_block_list("all", cls=keep_headers)
    staged = []
    for block in uncommitted:
        sequence = parse_block_id(block.id)
        if sequence is not None:  # anything else was left by another tool: not part of the file
            staged.append((block.id, block.size, sequence))
    staged.sort(key=lambda b: (b[2], b[0]))
    length = headers.get("x-ms-blob-content-length") or headers.get("X-Ms-Blob-Content-Length")
    committed_size = int(length) if length is not None else sum(b.size for b in committed)
    return BlockList(committed_size, [(b.id, b.size) for b in committed], staged)


def commit_blocks(blob: Any, ids: list[str], metadata: Optional[dict] = None) -> None:
    from azure.storage.blob import BlobBlock

    blob.commit_block_list([BlobBlock(block_id=i) for i in ids], metadata=metadata)


class _Writer:
    """What both writers share: their state, a buffer, close() and cancel()."""

    def __init__(self, driver: Any, path: str, blob: Any):
        self._driver = driver
        self._path = path
        self._blob = blob
        self._buffer = bytearray()
        self._state = WriterState(driver.name, path)

    def _flush(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self._state.close():
            self._flush()

    def cancel(self) -> None:
        self._state.cancel()
        self._buffer.clear()
        self._driver.discard_blob(self._path, self._blob)


class BlockBlobWriter(_Writer):
    """Appends to a block blob by staging blocks; see the module docstring."""

    def __init__(self, driver: Any, path: str, blob: Any, blocks: BlockList):
        super().__init__(driver, path, blob)
        self._ids = blocks.ids_in_order()
        self._stored = blocks.size  # bytes committed or staged
        self._sequence = blocks.next_sequence
        self._nonce = writer_nonce()

    @property
    def size(self) -> int:
        return self._stored + len(self._buffer)

    def write(self, data: bytes) -> int:
        self._state.require_open()
        view = memoryview(data)
        while view:
            room = BLOCK_SIZE - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) >= BLOCK_SIZE:
                self._flush()  # on failure the bytes stay buffered and counted
        return len(data)

    def _flush(self) -> None:
        if not self._buffer:
            return
        new_id = block_id(self._sequence, self._nonce)
        with self._driver.errors(self._path):
            self._blob.stage_block(new_id, bytes(self._buffer), length=len(self._buffer))
        self._sequence += 1
        self._ids.append(new_id)
        self._stored += len(self._buffer)
        self._buffer.clear()

    def commit(self) -> None:
        with self._state.committing():
            self._flush()
            with self._driver.errors(self._path):
                commit_blocks(self._blob, self._ids)  # no metadata: clears the staged mark


class AppendBlobWriter(_Writer):
    """Continues an append blob, which is how registry 2.x's azure driver wrote uploads,
    so an upload it started can be finished here."""

    def __init__(self, driver: Any, path: str, blob: Any, size: int):
        super().__init__(driver, path, blob)
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> int:
        self._state.require_open()
        self._buffer += data
        self._size += len(data)
        while len(self._buffer) >= APPEND_BLOCK_SIZE:
            self._append(APPEND_BLOCK_SIZE)
        return len(data)

    def _append(self, length: int) -> None:
        piece = bytes(self._buffer[:length])
        with self._driver.errors(self._path):
            self._blob.append_block(piece, length=len(piece))
        del self._buffer[:len(piece)]

    def _flush(self) -> None:
        while self._buffer:
            self._append(APPEND_BLOCK_SIZE)

    def commit(self) -> None:
        with self._state.committing():
            self._flush()
