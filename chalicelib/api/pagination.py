"""The `n`/`last` pagination shared by tags/list and _catalog, with its Link header."""
from __future__ import annotations

from typing import Optional
from urllib.parse import urlencode

from ..registry.catalog import page
from .app import Scope
from .params import parse_n


def paginate(scope: Scope, names: list[str], path: str, maximum: Optional[int] = None) -> tuple[list[str], list]:
    """One page of names and the headers announcing the next one."""
    n = parse_n(scope.request.arg("n"), maximum)
    last = scope.request.arg("last")
    entries, more = page(names, n, last)
    headers = []
    if more and entries:
        query = urlencode({"n": n, "last": entries[-1]})
        headers.append(("Link", f'<{path}?{query}>; rel="next"'))
    return entries, headers
