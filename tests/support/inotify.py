"""inotify's watch limit in a user namespace of the test's own, and the truth about
it measured apart from stemd: how many of a tree's folders a fresh inotify instance
really gets there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Run under the namespace prefix: first, as a neighbour would, hold one watch on each
# folder of argv[2] (if given) in an instance of its own; then add watches on the
# tree's folders (argv[1]), root first, until the kernel refuses one; print how many
# it gave.
MEASURE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def folders(root):
    return [root] + [os.path.join(p, d) for p, ds, _ in os.walk(root) for d in ds]
if len(sys.argv) > 2:
    neighbour = libc.inotify_init1(os.O_CLOEXEC)
    for folder in folders(sys.argv[2]):
        assert libc.inotify_add_watch(neighbour, os.fsencode(folder), 0x100) >= 0
fd = libc.inotify_init1(os.O_CLOEXEC)
given = 0
if fd >= 0:
    for folder in folders(sys.argv[1]):
        if libc.inotify_add_watch(fd, os.fsencode(folder), 0x100) < 0:
            break
        given += 1
print(given)
"""

# The same neighbour as a process of its own (as another program of the user would
# be), for a script run with it (argv[3], if given) before the rest: it holds its
# watches until the script ends.
HOLD = r"""
import subprocess, sys
NEIGHBOUR = '''
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_CLOEXEC)
root = sys.argv[1]
for folder in [root] + [os.path.join(p, d) for p, ds, _ in os.walk(root) for d in ds]:
    assert libc.inotify_add_watch(fd, os.fsencode(folder), 0x100) >= 0
print("holding", flush=True)
sys.stdin.read()
'''
if len(sys.argv) > 3:
    _neighbour = subprocess.Popen(
        [sys.executable, "-c", NEIGHBOUR, sys.argv[3]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert _neighbour.stdout.readline() == b"holding\n"
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


def watchable(watches: int, root: Path, neighbour: Path | None = None) -> int:
    """How many folders of `root` inotify watches under a limit of `watches`, with
    a neighbour holding a watch on each folder of `neighbour`."""
    extra = [str(neighbour)] if neighbour is not None else []
    run = subprocess.run(
        [*limited(watches), sys.executable, "-c", MEASURE, str(root), *extra],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(run.stdout)
