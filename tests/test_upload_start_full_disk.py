"""An upload started on a full disk leaves nothing behind (issue 14).

`stratus serve` over a tiny tmpfs whose inodes run out at each step of starting an
upload (the upload's folder, its startedat, its data file): the POST fails, and no
folder holding only startedat is left for the purger to find days later.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.servers import stratus_server


@pytest.fixture()
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=400", "tmpfs", str(mount)],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _use_inodes_until(free: int, where: Path) -> None:
    """Create empty files until exactly `free` inodes are left on where's filesystem."""
    n = 0
    while os.statvfs(where).f_ffree > free:
        (where / f"filler-{n}").touch()
        n += 1
    assert os.statvfs(where).f_ffree == free


def _free_inodes(where: Path, filler: Path) -> None:
    for path in filler.iterdir():
        path.unlink()


def test_post_failing_on_a_full_disk_leaves_no_upload_folder(tiny_disk: Path) -> None:
    root = tiny_disk / "registry"
    root.mkdir()
    filler = tiny_disk / "filler"
    filler.mkdir()
    uploads = root / "docker/registry/v2/repositories/full/disk/_uploads"
    with stratus_server(root, {"REGISTRY_LOG_LEVEL": "error"}) as url:
        started = requests.post(f"{url}/v2/full/disk/blobs/uploads/", timeout=30)
        assert started.status_code == 202, started.text  # makes _uploads itself
        before = set(os.listdir(uploads))
        failures = 0
        # 0: no room for the upload's folder; 1: for its startedat; 2: for its data file
        for free in (0, 1, 2):
            _use_inodes_until(free, filler)
            response = requests.post(f"{url}/v2/full/disk/blobs/uploads/", timeout=30)
            left = set(os.listdir(uploads)) - before
            _free_inodes(tiny_disk, filler)
            if response.status_code == 202:  # the filesystem found room after all
                before |= left
                continue
            failures += 1
            assert response.status_code >= 500, response.text
            assert response.json()["errors"][0]["code"], response.text
            assert not left, f"with {free} inodes free, a failed POST left {sorted(left)}: " + str(
                [sorted(os.listdir(uploads / name)) for name in left]
            )
        assert failures == 3, "every step of starting an upload should have run out of inodes"
