"""Real mounts for fault tests: a small or read-only tmpfs over a test folder.

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
