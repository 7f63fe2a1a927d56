"""Are the inbox and outbox there? A shared folder can vanish and come back.

A NAS share gets unmounted, a USB disk is pulled, someone deletes and recreates
a folder. stemd must then wait, not fail every queued job with "source gone",
and must not write stems into an empty mount point's underlying disk by
recreating the outbox itself. The service checks every second and pauses the
worker while a folder is missing; the worker asks `missing()` when an error
might have been caused by a folder disappearing under it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class FolderEvent(Enum):
    GONE = "gone"  # was there, is not now
    BACK = "back"  # was gone, is there again
    REPLACED = "replaced"  # there, but a different folder (recreated or remounted)


@dataclass(frozen=True)
class FolderChange:
    name: str  # "inbox" or "outbox"
    path: Path
    event: FolderEvent


Identity = tuple[int, int]  # (st_dev, st_ino)


def identity(path: Path) -> Identity | None:
    """The folder's (device, inode), or None when it is not an existing folder."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


class SharedFolders:
    """The identities of the inbox and outbox as last seen, and what changed."""

    def __init__(self, inbox: Path, outbox: Path) -> None:
        self.paths = {"inbox": inbox, "outbox": outbox}
        self._seen: dict[str, Identity | None] = {
            name: identity(path) for name, path in self.paths.items()
        }

    def check(self) -> list[FolderChange]:
        """Stat both folders; report what changed since the last check."""
        changes: list[FolderChange] = []
        for name, path in self.paths.items():
            now, before = identity(path), self._seen[name]
            if now == before:
                continue
            if now is None:
                kind = FolderEvent.GONE
            elif before is None:
                kind = FolderEvent.BACK
            else:
                kind = FolderEvent.REPLACED
            self._seen[name] = now
            changes.append(FolderChange(name, path, kind))
        return changes

    def forget(self, name: str) -> None:
        """Count `name` as gone, so the next check reports it back when it is there:
        for a deletion seen by its event, which a quick re-creation (even with the
        same inode number) would hide from `check`."""
        self._seen[name] = None

    def missing(self) -> list[str]:
        """Names of the folders not there right now (a fresh stat, not the last check)."""
        return [name for name, path in self.paths.items() if identity(path) is None]
