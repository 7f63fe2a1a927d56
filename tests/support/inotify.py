"""inotify's watch limit in a user namespace of the test's own, and the truth about
it measured apart from stemd: how many of a tree's folders a fresh inotify instance
really gets there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Run under the namespace prefix: add watches on the tree's folders, root first,
# until the kernel refuses one; print how many it gave.
MEASURE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_CLOEXEC)
given = 0
if fd >= 0:
    root = sys.argv[1]
    folders = [root] + [os.path.join(p, d) for p, ds, _ in os.walk(root) for d in ds]
    for folder in folders:
        if libc.inotify_add_watch(fd, os.fsencode(folder), 0x100) < 0:
            break
        given += 1
print(given)
"""


def user_namespaces_work() -> bool:
    try:
        probe = subprocess.run(
            ["unshare", "--user", "--map-root-user", "true"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


needs_userns = pytest.mark.skipif(
    not user_namespaces_work(), reason="unshare --user is not allowed on this machine"
)


def limited(watches: int) -> list[str]:
    """sh -c SCRIPT sh CMD...: set the namespace's limit, then run CMD."""
    script = f'echo {watches} > /proc/sys/user/max_inotify_watches && exec "$@"'
    return ["unshare", "--user", "--map-root-user", "sh", "-c", script, "sh"]


def watchable(watches: int, root: Path) -> int:
    """How many folders of `root` inotify watches under a limit of `watches`."""
    run = subprocess.run(
        [*limited(watches), sys.executable, "-c", MEASURE, str(root)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(run.stdout)
