"""Direct writes on Azure: a file's parts go to Put Block SAS URLs, never through us.

``begin_direct`` marks the (empty) file with the metadata ``stratus_direct=<part
size>`` beside ``stratus_staged``. Part i is the block ``<i, 10 digits>-d12ec700``
(base64, the same length as every block id of ours); a part sent again replaces its
block. ``assemble_direct`` commits blocks 1..n with one Put Block List, which drops
``stratus_staged`` (the file becomes readable) and keeps ``stratus_direct``; ``move``
clears the mark the copy carries over.

The driver refuses to append to a direct file (DirectFileError): its block ids tell,
or while it has no parts yet, its metadata.

Each URL is a SAS for this one blob with write permission only: it can put blocks
on (or overwrite, or commit) that blob and nothing else, and cannot read anything.
Whatever arrives is read back and verified before it becomes a blob.
"""
from __future__ import annotations

import base64
from typing import Any, Optional
from urllib.parse import quote

from ...context import Context
from ..base import DirectFile, DirectFileError, InvalidOffsetError, PartURL, StorageError, StoredPart, UnsupportedMethodError
from . import blocks

NAME = "azure"
MiB = 1 << 20
MAX_PARTS = 10_000
MAX_BLOCK_SIZE = 4000 * MiB


def _wire_id(number: int) -> str:
    """Part `number`'s block id as the service sees it: the SDK base64-encodes the ids
    it is given once more on the wire (and decodes them in listings), so a URL must too."""
    return base64.b64encode(blocks.block_id(number, blocks.DIRECT_NONCE).encode()).decode()


def direct_info(properties: Any) -> Optional[DirectFile]:
    part_size = blocks.direct_part_size(properties.metadata)
    if part_size is None:
        return None
    if blocks.is_staged(properties.metadata):
        return DirectFile(part_size)
    return DirectFile(part_size, assembled=True, size=int(properties.size))


class AzureDirectWrites:
    """The DirectWriteDriver half of AzureDriver."""

    direct_kind = "azure-blocks"
    direct_part_size_range = (1, MAX_BLOCK_SIZE)
    direct_max_parts = MAX_PARTS

    # provided by AzureDriver
    params: Any
    signer: Any
    key: Any
    errors: Any
    _blob: Any

    def refuse_direct(self, path: str, blob: Any) -> None:
        """DirectFileError when the file is a direct file (called by writer(append=True))."""
        info = direct_info(blob.get_blob_properties())
        if info is not None:
            raise DirectFileError(NAME, path, info)

    def begin_direct(self, ctx: Context, path: str, part_size: int) -> DirectFile:
        blob = self._blob(self.key(path))
        with self.errors(path):
            properties = blob.get_blob_properties()
            info = direct_info(properties)
            if info is not None:
                return info
            size = blocks.read_block_list(blob).size if blocks.is_staged(properties.metadata) else properties.size
            if size:
                raise InvalidOffsetError(NAME, path, size)
            blob.set_blob_metadata({**blocks.STAGED_METADATA, blocks.DIRECT: str(part_size)})
        return DirectFile(part_size)

    def direct_file(self, ctx: Context, path: str) -> Optional[DirectFile]:
        blob = self._blob(self.key(path))
        with self.errors(path):
            return direct_info(blob.get_blob_properties())

    def presign_parts(self, ctx: Context, path: str, numbers: list[int], expiry_seconds: int) -> list[PartURL]:
        key = self.key(path)
        blob = self._blob(key)
        with self.errors(path):
            url = self.signer.blob_url(self.params.container, key, int(expiry_seconds), write=True)
        if url is None:
            raise UnsupportedMethodError(NAME, path, "no account key or Entra credential to sign part URLs with")
        headers = {"x-ms-version": blob.api_version}
        return [PartURL(n, "PUT", f"{url}&comp=block&blockid={quote(_wire_id(n), safe='')}", dict(headers))
                for n in numbers]

    def stored_parts(self, ctx: Context, path: str) -> list[StoredPart]:
        blob = self._blob(self.key(path))
        with self.errors(path):
            listing = blocks.read_block_list(blob)
        found = {}
        for block_id, size, _ in listing.staged:
            number = blocks.direct_part_number(block_id)
            if number is not None:
                found[number] = size
        return [StoredPart(n, size) for n, size in sorted(found.items())]

    def assemble_direct(self, ctx: Context, path: str, count: int) -> int:
        blob = self._blob(self.key(path))
        with self.errors(path):
            properties = blob.get_blob_properties()
            info = direct_info(properties)
            if info is None or info.assembled:
                raise StorageError(NAME, path, "file is not collecting direct parts")
            sizes = {blocks.direct_part_number(i): size for i, size, _ in blocks.read_block_list(blob).staged}
            missing = [n for n in range(1, count + 1) if n not in sizes]
            if missing:
                raise StorageError(NAME, path, f"direct parts missing: {missing[:5]}")
            ids = [blocks.block_id(n, blocks.DIRECT_NONCE) for n in range(1, count + 1)]
            # no stratus_staged: the file is whole and readable
            blocks.commit_blocks(blob, ids, metadata={blocks.DIRECT: str(info.part_size)})
        return sum(sizes[n] for n in range(1, count + 1))

    def read_range(self, ctx: Context, path: str, offset: int, length: int) -> bytes:
        blob = self._blob(self.key(path))
        with self.errors(path):
            data = blob.download_blob(offset=offset, length=length).readall()
        if len(data) != length:
            raise StorageError(NAME, path, f"read {len(data)} of {length} bytes at {offset}")
        return data
