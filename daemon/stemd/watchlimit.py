"""inotify's limits as this process meets them: how many folders of the inbox
inotify watches for stemd, or could watch now.

watchdog reacts to the watch limit in one of two ways, depending on its version and
the kernel: `schedule()` raises ENOSPC (and takes back the watches it had added), or
it skips the folders it cannot watch without a word. Either way stemd polls instead,
and says how many of how many folders inotify took: counted from the watches this
process holds (the skipping case) or by trying them once more on an instance of its
own (the raising case), never guessed from the error.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# inotify_add_watch's mask for the probe: folders only, the events watchdog asks for
# are irrelevant to whether a watch can be had
IN_CREATE = 0x00000100
IN_ONLYDIR = 0x01000000
LIMIT_ERRORS = (errno.ENOSPC, errno.EMFILE, errno.ENOMEM)


def walk_folders(root: Path) -> Iterator[Path]:
    """`root`, then every folder below it, in the order watchdog adds their watches
    (os.walk, symlinks not followed)."""
    yield root
    for parent, dirs, _files in os.walk(root):
        for name in dirs:
            path = Path(parent, name)
            if not path.is_symlink():
                yield path


def count_folders(root: Path) -> int:
    """`root` and every folder below it, as watchdog walks them."""
    return sum(1 for _ in walk_folders(root))


def watches_held() -> int | None:
    """Watches held by this process's inotify instances (/proc/self/fdinfo), or
    None where that cannot be read. stemd runs one observer at a time."""
    total = 0
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                    continue
                with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
                    total += sum(line.startswith("inotify wd:") for line in info)
            except OSError:
                continue  # closed meanwhile
    except OSError:
        return None
    return total


@dataclass(frozen=True)
class Probe:
    watched: int  # folders a fresh inotify instance took, in walk_folders' order
    full: bool  # the kernel refused one for want of room (the watch or instance limit)


def watchable_folders(root: Path, limit: int) -> Probe:
    """How many of the first `limit` folders of `root` one new inotify instance can
    watch now, and whether the limit is what stopped it: a folder that cannot be
    read, or vanished meanwhile, is passed over as watchdog passes over it. The
    watches are let go again before it returns."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        return Probe(0, ctypes.get_errno() in LIMIT_ERRORS)
    watched, full = 0, False
    try:
        for index, folder in enumerate(walk_folders(root)):
            if index >= limit:
                break
            if libc.inotify_add_watch(fd, os.fsencode(folder), IN_CREATE | IN_ONLYDIR) >= 0:
                watched += 1
                continue
            full = ctypes.get_errno() in LIMIT_ERRORS
            if full or index == 0:
                break  # without the root's watch, none of the others counts
    finally:
        os.close(fd)
    return Probe(watched, full)


def read_sysctl(name: str) -> str:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return "unknown"
