"""Azure Blob Storage driver over the registry:2 layout.

A storage path maps to a blob name: ``<rootdirectory><path>`` without its leading
"/" (``docker/registry/v2/blobs/...``), or with it when ``legacyrootprefix`` is
set, which is how registry 2.x's azure driver named blobs. Directories are only
name prefixes: one exists while a blob lives below it.

Files written across requests are staged blocks (see blocks.py); moves are
server-side copies; reads may be redirected to a read-only SAS URL.
"""
from __future__ import annotations

import io
import itertools
import logging
import time
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterator, Optional, Sequence

from ...context import Context
from ..base import (
    FileInfo,
    FileWriter,
    InvalidOffsetError,
    PathNotFoundError,
    StorageError,
    check_path,
    is_component,
)
from . import blocks
from .client import Signer, service_client
from .direct import AzureDirectWrites
from .parameters import AzureParameters

NAME = "azure"
log = logging.getLogger("stratus.storage.azure")

_NOT_FOUND = {"BlobNotFound", "ContainerNotFound", "ResourceNotFound", "CannotVerifyCopySource"}
_DELETE_BATCH = 256  # the most one Blob Batch request may carry


def _code(exc: Exception) -> str:
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def _is_not_found(exc: Exception) -> bool:
    return getattr(exc, "status_code", None) == 404 or _code(exc) in _NOT_FOUND


def _valid_parts(relative: str) -> bool:
    return all(is_component(p) for p in relative.split("/"))


class AzureDriver(AzureDirectWrites):
    name = NAME

    def __init__(self, params: AzureParameters):
        self.params = params
        root = params.root_directory
        self._prefix = ("/" if params.legacy_root_prefix else "") + (root + "/" if root else "")
        self._bound: Optional[tuple[Any, Any, Signer]] = None

    # -- SDK plumbing ----------------------------------------------------------------

    def _bind(self) -> tuple[Any, Any, Signer]:
        # Asked on every call: service_client() hands back the process's one client
        # (a new one after a fork), and the container client and signer follow it.
        service = service_client(self.params)
        bound = self._bound
        if bound is None or bound[0] is not service:
            container = service.get_container_client(self.params.container)
            bound = (service, container, Signer(self.params, service))
            self._bound = bound
        return bound

    @property
    def container(self) -> Any:
        return self._bind()[1]

    @property
    def signer(self) -> Signer:
        return self._bind()[2]

    def key(self, path: str, *, allow_root: bool = False) -> str:
        check_path(NAME, path, allow_root=allow_root)
        return self._prefix if path == "/" else self._prefix + path[1:]

    def _path(self, key: str) -> str:
        return "/" + key[len(self._prefix):]

    def error(self, path: str, detail: str) -> StorageError:
        return StorageError(NAME, path, detail)

    @contextmanager
    def errors(self, path: str, *, missing_is_not_found: bool = True) -> Iterator[None]:
        """Re-raise SDK exceptions as StorageErrors so none crosses the protocol."""
        from azure.core.exceptions import AzureError

        try:
            yield
        except AzureError as exc:
            code = _code(exc)
            if code == "ContainerNotFound" and not missing_is_not_found:
                raise self.error(path, f"container {self.params.container!r} does not exist") from exc
            if missing_is_not_found and _is_not_found(exc):
                raise PathNotFoundError(NAME, path) from exc
            message = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).splitlines()[0]
            raise self.error(path, f"{message} ({code})" if code else message) from exc

    def _blob(self, key: str) -> Any:
        return self.container.get_blob_client(key)

    # -- content ---------------------------------------------------------------------

    def get_content(self, ctx: Context, path: str) -> bytes:
        with self.reader(ctx, path) as stream:
            return stream.read()

    def put_content(self, ctx: Context, path: str, content: bytes) -> None:
        blob = self._blob(self.key(path))
        with self.errors(path, missing_is_not_found=False):
            try:
                blob.upload_blob(content, overwrite=True, length=len(content))
            except Exception as exc:
                # registry 2.x wrote small files as append blobs, which Put Blob may not replace
                if _code(exc) != "InvalidBlobType":
                    raise
                blob.delete_blob()
                blob.upload_blob(content, overwrite=True, length=len(content))

    def reader(self, ctx: Context, path: str, offset: int = 0) -> BinaryIO:
        key = self.key(path)
        if offset < 0:
            raise InvalidOffsetError(NAME, path, offset)
        blob = self._blob(key)
        with self.errors(path):
            stream = self._open_download(path, blob, offset)
            if stream is None:
                # a file still being written: its staged blocks must be committed to be read
                self._materialize(path, blob)
                stream = self._open_download(path, blob, offset, materialized=True)
            assert stream is not None
            return stream

    def _open_download(
        self, path: str, blob: Any, offset: int, materialized: bool = False
    ) -> Optional[BinaryIO]:
        """A stream from offset, or None when the blob has staged blocks to commit first."""
        try:
            # offset 0 asks for no range, which an empty blob would refuse
            downloader = blob.download_blob(offset=offset or None)
        except Exception as exc:
            if getattr(exc, "status_code", None) != 416:
                raise
            properties = blob.get_blob_properties()
            if blocks.is_staged(properties.metadata) and not materialized:
                return None
            if offset == properties.size:
                return io.BytesIO(b"")
            raise InvalidOffsetError(NAME, path, offset) from None
        if blocks.is_staged(downloader.properties.metadata) and not materialized:
            return None
        return _DownloadStream(downloader, path, self)  # type: ignore[return-value]

    def _materialize(self, path: str, blob: Any) -> None:
        """Commit a file's staged blocks so they can be read or copied; it stays marked
        as being written, so the next writer still appends after them."""
        listing = blocks.read_block_list(blob)
        if listing.staged:
            blocks.commit_blocks(blob, listing.ids_in_order(), metadata=blocks.STAGED_METADATA)

    # -- writers ---------------------------------------------------------------------

    def writer(self, ctx: Context, path: str, append: bool = False) -> FileWriter:
        key = self.key(path)
        blob = self._blob(key)
        if not append:
            with self.errors(path, missing_is_not_found=False):
                self._create_empty(blob)
            return blocks.BlockBlobWriter(self, path, blob, blocks.BlockList(0))
        with self.errors(path):
            try:
                listing = blocks.read_block_list(blob)
            except Exception as exc:
                if _code(exc) != "InvalidBlobType":
                    raise
                properties = blob.get_blob_properties()
                if str(getattr(properties.blob_type, "value", properties.blob_type)) != "AppendBlob":
                    raise self.error(path, f"cannot append to a {properties.blob_type}") from None
                return blocks.AppendBlobWriter(self, path, blob, properties.size)
            # a direct file shows in its block ids, or (no parts yet) in its metadata
            if listing.has_direct_parts or listing.empty:
                self.refuse_direct(path, blob)
            if not listing.committed_is_ours:
                listing = self._adopt_committed(blob, listing)
        return blocks.BlockBlobWriter(self, path, blob, listing)

    def _create_empty(self, blob: Any) -> None:
        # An empty commit creates the file (so stat finds the upload), truncates an
        # old one and discards blocks an earlier writer left staged.
        try:
            blocks.commit_blocks(blob, [], metadata=blocks.STAGED_METADATA)
        except Exception as exc:
            if _code(exc) != "InvalidBlobType":
                raise
            blob.delete_blob()
            blocks.commit_blocks(blob, [], metadata=blocks.STAGED_METADATA)

    def _adopt_committed(self, blob: Any, listing: blocks.BlockList) -> blocks.BlockList:
        """Re-commit content that Put Blob (or another tool) wrote as our blocks, so that
        new blocks can follow it. Only files from put_content, which are small, or from
        other tools ever need this; it goes one block at a time, never all in memory."""
        nonce = blocks.writer_nonce()
        ids = []
        for number, start in enumerate(range(0, listing.committed_size, blocks.BLOCK_SIZE)):
            length = min(blocks.BLOCK_SIZE, listing.committed_size - start)
            piece = blob.download_blob(offset=start, length=length).readall()
            ids.append(blocks.block_id(number, nonce))
            blob.stage_block(ids[-1], piece, length=len(piece))
        blocks.commit_blocks(blob, ids, metadata=blocks.STAGED_METADATA)
        return blocks.read_block_list(blob)

    def discard_blob(self, path: str, blob: Any) -> None:
        """Delete a file with whatever blocks are staged on it."""
        with self.errors(path, missing_is_not_found=False):
            try:
                blob.delete_blob()
                return
            except Exception as exc:
                if not _is_not_found(exc):
                    raise
            # Staged blocks without a committed blob: an empty commit makes them
            # deletable (they would otherwise linger for a week).
            try:
                if not blocks.read_block_list(blob).staged:
                    return
            except Exception as exc:
                if _is_not_found(exc):
                    return
                raise
            blocks.commit_blocks(blob, [])
            blob.delete_blob()

    # -- metadata --------------------------------------------------------------------

    def stat(self, ctx: Context, path: str) -> FileInfo:
        key = self.key(path, allow_root=True)
        if path == "/":
            return FileInfo(path="/", is_dir=True)
        with self.errors(path):
            blob = self._blob(key)
            try:
                properties = blob.get_blob_properties()
            except Exception as exc:
                if not _is_not_found(exc) or _code(exc) == "ContainerNotFound":
                    raise
            else:
                size = properties.size
                if blocks.is_staged(properties.metadata):
                    size = blocks.read_block_list(blob).size  # an upload in progress: count staged bytes
                return FileInfo(path=path, size=size, mod_time=properties.last_modified, is_dir=False)
            for _ in self.container.list_blobs(name_starts_with=key + "/", results_per_page=1):
                return FileInfo(path=path, is_dir=True)
        raise PathNotFoundError(NAME, path)

    def list(self, ctx: Context, path: str) -> list[str]:
        key = self.key(path, allow_root=True)
        prefix = key if path == "/" else key + "/"
        children = []
        try:
            with self.errors(path):
                for item in self.container.walk_blobs(name_starts_with=prefix or None, delimiter="/"):
                    name = item.name[len(prefix):].rstrip("/")
                    if name and _valid_parts(name):
                        children.append(("" if path == "/" else path) + "/" + name)
        except PathNotFoundError:
            if path != "/":
                raise
            # no container yet: an empty registry, as a missing root directory is
        if not children and path != "/":
            raise PathNotFoundError(NAME, path)
        return sorted(set(children))

    def walk(self, ctx: Context, path: str) -> Iterator[FileInfo]:
        key = self.key(path, allow_root=True)
        prefix = key if path == "/" else key + "/"
        items = self._list_flat(path, prefix)
        try:
            first = next(items, None)
        except PathNotFoundError:
            if path != "/":
                raise
            first = None
        if first is None:
            if path == "/":
                return iter(())
            raise PathNotFoundError(NAME, path, "no such directory")
        return self._walk(path, prefix, first, items)

    def _list_flat(self, path: str, prefix: str) -> Iterator[Any]:
        with self.errors(path):
            yield from self.container.list_blobs(name_starts_with=prefix or None, include=["metadata"])

    def _walk(self, path: str, prefix: str, first: Any, rest: Iterator[Any]) -> Iterator[FileInfo]:
        # Listing order is lexicographic, so each directory's blobs come together:
        # emitting a directory before its first blob gives a depth-first walk.
        base = "" if path == "/" else path
        open_dirs: list[str] = []
        for item in itertools.chain([first], rest):
            relative = item.name[len(prefix):]
            if not relative or not _valid_parts(relative):
                continue
            *dirs, _ = relative.split("/")
            common = 0
            while common < min(len(dirs), len(open_dirs)) and dirs[common] == open_dirs[common]:
                common += 1
            del open_dirs[common:]
            for name in dirs[common:]:
                open_dirs.append(name)
                yield FileInfo(path=f"{base}/{'/'.join(open_dirs)}", is_dir=True)
            size = item.size
            if blocks.is_staged(item.metadata):
                with self.errors(path):
                    size = blocks.read_block_list(self._blob(item.name)).size
            yield FileInfo(path=f"{base}/{relative}", size=size, mod_time=item.last_modified)

    # -- move and delete -------------------------------------------------------------

    def move(self, ctx: Context, source: str, dest: str) -> None:
        source_blob = self._blob(self.key(source))
        dest_blob = self._blob(self.key(dest))
        with self.errors(source):
            properties = source_blob.get_blob_properties()
            if blocks.is_staged(properties.metadata):
                self._materialize(source, source_blob)
        with self.errors(dest, missing_is_not_found=False):
            self._copy(source, source_blob, dest_blob)
            if blocks.direct_part_size(properties.metadata) is not None:
                dest_blob.set_blob_metadata({})  # the copy took the source's direct mark
        with self.errors(source, missing_is_not_found=False):
            try:
                source_blob.delete_blob()
            except Exception as exc:
                if not _is_not_found(exc):  # a concurrent move or delete took it: fine
                    raise

    def _copy(self, source: str, source_blob: Any, dest_blob: Any) -> None:
        """Server-side copy; within one account it is usually done when the call returns.

        The source needs no SAS: within one storage account the credentials that
        authorize the copy authorize reading its source too.
        """
        url = source_blob.url
        try:
            result = dest_blob.start_copy_from_url(url)
        except Exception as exc:
            if _is_not_found(exc) and _code(exc) != "ContainerNotFound":
                raise PathNotFoundError(NAME, source) from None
            if _code(exc) != "InvalidBlobType":
                raise
            dest_blob.delete_blob()  # a legacy append blob in the way
            result = dest_blob.start_copy_from_url(url)
        status, copy_id = result.get("copy_status"), result.get("copy_id")
        attempt = 0
        while status == "pending":
            attempt += 1
            if attempt > self.params.copy_poll_max_retry:
                dest_blob.abort_copy(copy_id)
                raise self.error(source, f"copy still pending after {attempt - 1} polls; aborted")
            time.sleep(self.params.copy_poll_delay * attempt)
            copy = dest_blob.get_blob_properties().copy
            status = copy.status
        if status != "success":
            raise self.error(source, f"copy ended {status}")

    def delete(self, ctx: Context, path: str) -> None:
        key = self.key(path)
        with self.errors(path):
            try:
                self._blob(key).delete_blob()
                return
            except Exception as exc:
                if not _is_not_found(exc) or _code(exc) == "ContainerNotFound":
                    raise
            # not a file: a directory is every blob below the prefix, including ones
            # that only have staged blocks (uploads in progress)
            listing = self.container.list_blobs(name_starts_with=key + "/", include=["uncommittedblobs"])
            names = [item.name for item in listing]
            if not names:
                raise PathNotFoundError(NAME, path)
            self._delete_all(path, names)

    def _delete_all(self, path: str, names: Sequence[str]) -> None:
        for start in range(0, len(names), _DELETE_BATCH):
            batch = names[start:start + _DELETE_BATCH]
            responses = []
            if len(batch) > 1:
                try:
                    responses = list(self.container.delete_blobs(*batch, raise_on_any_failure=False))
                except Exception as exc:  # accounts without Blob Batch: one at a time
                    log.debug("batch delete refused (%s); deleting one by one", _code(exc) or exc)
            if not responses:
                for name in batch:
                    self.discard_blob(path, self._blob(name))
            for name, response in zip(batch, responses):
                if response.status_code == 404:
                    self.discard_blob(path, self._blob(name))  # uncommitted-only, or gone already
                elif response.status_code >= 300:
                    raise self.error(self._path(name), f"delete failed with HTTP {response.status_code}")

    # -- redirects -------------------------------------------------------------------

    def redirect_url(self, ctx: Context, method: str, path: str, expiry_seconds: int) -> Optional[str]:
        key = self.key(path)
        if method.upper() not in ("GET", "HEAD"):
            return None
        with self.errors(path):
            return self.signer.blob_url(self.params.container, key, expiry_seconds)


class _DownloadStream:
    """A blob download as a readable binary stream, fetched in 4 MiB requests.

    Deliberately no fileno(): a server seeing one would hand the stream to its
    file wrapper, which reads to the end of the blob even for a short Range.
    """

    def __init__(self, downloader: Any, path: str, driver: AzureDriver):
        self._downloader = downloader
        self._path = path
        self._driver = driver
        self.closed = False

    @property
    def size(self) -> int:
        return self._downloader.size

    def readable(self) -> bool:
        return True

    def read(self, size: Optional[int] = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed stream")
        with self._driver.errors(self._path):
            return self._downloader.read(-1 if size is None or size < 0 else size)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        self.closed = True  # the rest of the download is simply never requested

    def __enter__(self) -> "_DownloadStream":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
