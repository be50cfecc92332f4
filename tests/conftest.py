from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from .servers import stratus_server


@dataclass(frozen=True)
class RunningRegistry:
    url: str
    root: Path  # the filesystem driver's rootdirectory


@pytest.fixture(scope="session")
def stratus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """One `stratus serve` over a filesystem root, shared by the session."""
    root = tmp_path_factory.mktemp("stratus") / "data"
    root.mkdir()
    with stratus_server(root) as url:
        yield RunningRegistry(url, root)


@pytest.fixture(scope="session")
def registry_url(stratus: RunningRegistry) -> str:
    return stratus.url
