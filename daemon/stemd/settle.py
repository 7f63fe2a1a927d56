"""Which paths to consider, and when a file is complete.

Two pure pieces: `ignore_reason` (names, folders and extensions that go no
further) and `Settler` (a file is complete when it was closed after writing and
its size and mtime stayed unchanged for the quiet period; on polled mounts,
where no close events exist, by the quiet period alone).
"""

from __future__ import annotations

import fnmatch
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath

# Partial downloads, sync-tool temporaries and NAS metadata folders. Matched
# against every component of the path relative to the inbox, case-insensitively.
BUILTIN_IGNORE: tuple[str, ...] = (
    ".*",  # dotfiles and dot-folders: .AppleDouble, .syncthing.*.tmp, .stfolder ...
    "*.part",
    "*.partial",
    "*.crdownload",
    "*.download",
    "*.tmp",
    "*.temp",
    "~$*",  # Office/Windows lock files
    "~syncthing~*",  # Syncthing temporaries on Windows-style shares
    "@eaDir",  # Synology thumbnails
    "#recycle",  # Synology recycle bin
    "#snapshot",
    "@Recycle",  # QNAP
    ".AppleDouble",
    "Thumbs.db",
    "desktop.ini",
    "$RECYCLE.BIN",
    "lost+found",
)


def ignore_reason(
    relative: PurePath, extensions: Iterable[str], extra_ignore: Iterable[str] = ()
) -> str | None:
    """Why this inbox-relative file path is not an input, or None if it is one."""
    patterns = (*BUILTIN_IGNORE, *extra_ignore)
    for index, part in enumerate(relative.parts):
        for pattern in patterns:
            if fnmatch.fnmatch(part.lower(), pattern.lower()):
                what = "name" if index == len(relative.parts) - 1 else "folder"
                return f"{what} {part!r} matches ignore pattern {pattern!r}"
    # Patterns with a slash match the whole relative path, e.g. "live/*.wav".
    text = relative.as_posix()
    for pattern in extra_ignore:
        if "/" in pattern and fnmatch.fnmatch(text, pattern):
            return f"path matches ignore pattern {pattern!r}"
    suffix = relative.suffix.lower().lstrip(".")
    if suffix not in set(extensions):
        return f"extension {relative.suffix or '(none)'!r} is not in watch.extensions"
    return None


def dir_ignored(relative: PurePath, extra_ignore: Iterable[str] = ()) -> bool:
    """True when a folder (and so everything below it) is ignored."""
    patterns = (*BUILTIN_IGNORE, *extra_ignore)
    return any(
        fnmatch.fnmatch(part.lower(), pattern.lower())
        for part in relative.parts
        for pattern in patterns
    )


@dataclass
class _Pending:
    size: int
    mtime_ns: int
    changed_at: float
    closed: bool  # no writer is known to hold it
    close_seen: bool = False  # a writer closed it (not merely "appeared")


class Settler:
    """Tracks files until they are complete.

    `require_close`: wait for a close-after-write (inotify) before the quiet
    period may end it. A file that is never closed (a hard link, a writer that
    died) is still taken after `stall_timeout` of no change, so nothing waits
    forever.
    """

    def __init__(
        self,
        quiet: float,
        require_close: bool,
        clock: Callable[[], float] = time.monotonic,
        stall_timeout: float | None = None,
    ) -> None:
        self.quiet = quiet
        self.require_close = require_close
        self.stall_timeout = stall_timeout if stall_timeout is not None else max(60.0, quiet * 10)
        self._clock = clock
        self._pending: dict[Path, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, path: object) -> bool:
        return path in self._pending

    def written(self, path: Path) -> None:
        """A write or creation was seen: the file is open for writing."""
        entry = self._pending.get(path)
        if entry is None:
            self._pending[path] = _Pending(-1, -1, self._clock(), closed=False)
        else:
            entry.closed = False
            entry.changed_at = self._clock()

    def closed(self, path: Path) -> None:
        """Closed after writing, or renamed within the inbox: no writer holds it."""
        entry = self._pending.get(path)
        if entry is None:
            self._pending[path] = _Pending(-1, -1, self._clock(), closed=True, close_seen=True)
        else:
            entry.closed = entry.close_seen = True

    def found(self, path: Path) -> None:
        """Seen by a scan, or created/moved in with no writer in sight yet.

        A writer we already know about keeps its state; otherwise the quiet
        period alone decides, until a write event shows a writer.
        """
        if path not in self._pending:
            self._pending[path] = _Pending(-1, -1, self._clock(), closed=True)

    created = found

    def forget(self, path: Path) -> None:
        self._pending.pop(path, None)

    def forget_under(self, folder: Path) -> None:
        for path in [p for p in self._pending if folder in p.parents]:
            del self._pending[path]

    def poll(self) -> list[Path]:
        """Stat every pending file; return (and stop tracking) the complete ones."""
        now = self._clock()
        done: list[Path] = []
        for path, entry in list(self._pending.items()):
            try:
                info = os.lstat(path)
            except OSError:
                del self._pending[path]  # gone, or unreadable: a later event brings it back
                continue
            if not stat.S_ISREG(info.st_mode):
                del self._pending[path]
                done.append(path)  # the caller reports why it is not an input
                continue
            if (info.st_size, info.st_mtime_ns) != (entry.size, entry.mtime_ns):
                entry.size, entry.mtime_ns = info.st_size, info.st_mtime_ns
                entry.changed_at = now
                continue
            quiet_for = now - entry.changed_at
            closed = entry.closed or not self.require_close
            # An empty file that nobody closed is a writer that has not started.
            if entry.size == 0 and not entry.close_seen and self.require_close:
                closed = False
            if (closed and quiet_for >= self.quiet) or quiet_for >= self.stall_timeout:
                del self._pending[path]
                done.append(path)
        return done
