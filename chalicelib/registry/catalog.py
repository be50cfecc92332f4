"""The catalog: every directory under repositories/ that holds `_manifests`."""
from __future__ import annotations

import bisect
from typing import Optional, Sequence

from ..context import Context
from ..storage import StorageDriver, StorageError, paths


def repositories(ctx: Context, driver: StorageDriver, marker: str = "_manifests") -> list[str]:
    """Every repository name holding the folder `marker`, sorted.

    Found by listing directories breadth first; components starting with `_` are
    the layout's own folders, never names. Names are sorted at the end because a
    walk's order is not lexical ('a-b' < 'a/b').
    """
    prefix = paths.REPOSITORIES + "/"
    names: list[str] = []
    pending = [paths.REPOSITORIES]
    while pending:
        path = pending.pop()
        try:
            children = driver.list(ctx, path)
        except StorageError:  # gone meanwhile, or a stray file
            continue
        for child in children:
            leaf = child.rsplit("/", 1)[1]
            if leaf == marker and path != paths.REPOSITORIES:
                names.append(path[len(prefix):])
            elif not leaf.startswith("_"):
                pending.append(child)
    names.sort()
    return names


def page(names: Sequence[str], n: Optional[int], last: Optional[str]) -> tuple[list[str], bool]:
    """One page of the sorted `names` after `last`; the flag says whether more follow."""
    start = 0 if last is None else bisect.bisect_right(names, last)
    end = len(names) if n is None else min(len(names), start + n)
    return list(names[start:end]), end < len(names)
