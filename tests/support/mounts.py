"""Real mounts for fault tests: a small or read-only tmpfs over a test folder, a
FUSE mount (bindfs) standing in for a network share, and a bind mount.

Mounting needs root (CI runs as root); tests that use these carry `needs_root`,
which skips them, with the reason shown in pytest's summary, everywhere else.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a tmpfs needs root (CI is root)"
)


@contextmanager
def tmpfs(folder: Path, size: str = "16m", readonly: bool = False) -> Iterator[Path]:
    """`folder` becomes a fresh tmpfs of `size` until the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0755" + (",ro" if readonly else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        # lazy: a daemon that still has a file open there must not fail the cleanup
        subprocess.run(["umount", "-l", str(folder)], check=True)


@contextmanager
def fuse_share(backing: Path, mount: Path) -> Iterator[Path]:
    """`mount` shows `backing` through FUSE (bindfs), as an NFS or SMB share shows
    another host's folder: writes made into `backing` raise no inotify event on
    `mount`. The filesystem type is `fuse`."""
    backing.mkdir(parents=True, exist_ok=True)
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["bindfs", str(backing), str(mount)], check=True, timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["fusermount", "-u", "-z", str(mount)], check=True, timeout=30)


@contextmanager
def bind_mount(folder: Path) -> Iterator[Path]:
    """`folder` bound onto itself: the same files, now on a mount of their own, so
    hard links and renames between it and the rest fail with EXDEV, as they do
    between two disks."""
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True, timeout=30)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True, timeout=30)
