"""The catalog: every directory under repositories/ that holds `_manifests`."""
from __future__ import annotations

import bisect
from typing import Optional, Sequence, Union

from ..context import Context
from ..storage import PathNotFoundError, StorageDriver, StorageError, paths


def repositories(
    ctx: Context, driver: StorageDriver, marker: Union[str, tuple[str, ...]] = "_manifests", strict: bool = False
) -> list[str]:
    """Every repository name holding the folder `marker` (or any of several), sorted.

    Found by listing directories breadth first; components starting with `_` are
    the layout's own folders, never names. Names are sorted at the end because a
    walk's order is not lexical ('a-b' < 'a/b').

    `strict` (garbage collection): a listing that fails for any reason but the
    directory being gone, or being a file, raises instead of leaving the names
    below it out; a repository missing from the mark would have its blobs swept.
    """
    prefix = paths.REPOSITORIES + "/"
    markers = (marker,) if isinstance(marker, str) else marker
    names: set[str] = set()
    pending = [paths.REPOSITORIES]
    while pending:
        path = pending.pop()
        try:
            children = driver.list(ctx, path)
        except PathNotFoundError:  # gone meanwhile
            continue
        except StorageError:
            if strict and not _is_file(ctx, driver, path):
                raise
            continue  # a stray file
        for child in children:
            leaf = child.rsplit("/", 1)[1]
            if leaf in markers and path != paths.REPOSITORIES:
                names.add(path[len(prefix):])
            elif not leaf.startswith("_"):
                pending.append(child)
    return sorted(names)


def _is_file(ctx: Context, driver: StorageDriver, path: str) -> bool:
    try:
        return not driver.stat(ctx, path).is_dir
    except PathNotFoundError:
        return True  # gone: nothing below it to miss


def page(names: Sequence[str], n: Optional[int], last: Optional[str]) -> tuple[list[str], bool]:
    """One page of the sorted `names` after `last`; the flag says whether more follow."""
    start = 0 if last is None else bisect.bisect_right(names, last)
    end = len(names) if n is None else min(len(names), start + n)
    return list(names[start:end]), end < len(names)
