"""Watches the inbox with watchdog (inotify or polling) and scans it.

Observer callbacks only put (kind, path) on a queue; the service's main loop
drains it. Nothing heavy runs on the observer thread.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePath

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from stemd.config import WatchConfig
from stemd.settle import dir_ignored
from stemd.watchlimit import count_folders, read_sysctl, watchable_folders, watches_held

log = logging.getLogger("stemd")

# Filesystems whose changes made elsewhere never reach local inotify.
NETWORK_FS_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "afs",
        "davfs",
        "sshfs",
        "virtiofs",
    }
)


class Change(Enum):
    CREATED = "created"  # appeared: new, moved in from outside, or hard-linked
    WRITTEN = "written"  # data written: a writer holds it until it closes it
    CLOSED = "closed"  # closed after writing, or moved in complete
    GONE = "gone"  # deleted or moved away
    DIR_ADDED = "dir_added"  # a folder appeared (moved in whole): scan it
    DIR_GONE = "dir_gone"
    INBOX_DELETED = "inbox_deleted"  # the watched folder itself: its watches are dead
    OVERFLOW = "overflow"  # the kernel dropped events: only a scan can tell what changed


@dataclass(frozen=True)
class FsChange:
    kind: Change
    path: Path


def fs_type_from_mountinfo(mountinfo: str, target: str) -> str:
    """The filesystem type of the longest mount point holding `target`."""
    best, best_type = "", "unknown"
    for line in mountinfo.splitlines():
        fields = line.split()
        try:
            # the mount point is field 5; the type follows the " - " separator
            mount_point = fields[4].replace("\\040", " ")
            fs_type = fields[fields.index("-") + 1]
        except (IndexError, ValueError):
            continue
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fs_type
    return best_type


def mount_fs_type(path: Path) -> str:
    """The filesystem type of the mount that holds `path` (from /proc/self/mountinfo)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
            return fs_type_from_mountinfo(mounts.read(), os.path.realpath(path))
    except OSError:
        return "unknown"


def choose_mode(mode: str, inbox: Path) -> str:
    """inotify or poll. `auto` polls on network and FUSE mounts."""
    if mode != "auto":
        return mode
    fs_type = mount_fs_type(inbox)
    if fs_type in NETWORK_FS_TYPES or fs_type.startswith("fuse"):
        return "poll"
    return "inotify"


class _Handler(FileSystemEventHandler):
    def __init__(self, changes: queue.SimpleQueue[FsChange], inbox: Path) -> None:
        self._changes = changes
        self._inbox = inbox

    def _put(self, kind: Change, raw: str | bytes) -> None:
        path = Path(os.fsdecode(raw))
        if path != self._inbox:
            self._changes.put(FsChange(kind, path))

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, DirDeletedEvent) and Path(os.fsdecode(event.src_path)) == self._inbox:
            # A folder made anew at the same path may even reuse the inode number,
            # so this event is the only sure sign; watchdog stops watching here.
            self._changes.put(FsChange(Change.INBOX_DELETED, self._inbox))
            return
        match event:
            case FileCreatedEvent():
                # inotify reports a file moved in from outside as created, with
                # no close to follow; a writer shows itself by modify events.
                self._put(Change.CREATED, event.src_path)
            case FileModifiedEvent():
                self._put(Change.WRITTEN, event.src_path)
            case FileClosedEvent():
                self._put(Change.CLOSED, event.src_path)
            case FileDeletedEvent():
                self._put(Change.GONE, event.src_path)
            case FileMovedEvent():
                self._put(Change.GONE, event.src_path)
                self._put(Change.CLOSED, event.dest_path)
            case DirCreatedEvent():
                self._put(Change.DIR_ADDED, event.src_path)
            case DirMovedEvent():
                self._put(Change.DIR_GONE, event.src_path)
                self._put(Change.DIR_ADDED, event.dest_path)
            case DirDeletedEvent():
                self._put(Change.DIR_GONE, event.src_path)
            case _:
                pass


class _OverflowHook(logging.Handler):
    """watchdog reports an inotify queue overflow only as a log warning; turn it
    into a change so the service rescans at once. If watchdog ever words it
    differently, the periodic rescan (watch.rescan_interval) still finds the files."""

    def __init__(self, changes: queue.SimpleQueue[FsChange], inbox: Path) -> None:
        super().__init__(logging.WARNING)
        self._changes = changes
        self._inbox = inbox

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._changes.put(FsChange(Change.OVERFLOW, self._inbox))


WATCHDOG_LOGGER = logging.getLogger("watchdog.observers")


class InboxWatcher:
    """Owns the watchdog observer thread for one inbox."""

    def __init__(self, inbox: Path, watch: WatchConfig) -> None:
        self.inbox = inbox
        self.watch = watch
        self.mode = choose_mode(watch.mode, inbox)
        self.changes: queue.SimpleQueue[FsChange] = queue.SimpleQueue()
        self._observer: BaseObserver | None = None
        self._overflow_hook = _OverflowHook(self.changes, inbox)

    @property
    def require_close(self) -> bool:
        """Polling sees no close events; only inotify can wait for one."""
        return self.mode == "inotify"

    def start(self) -> None:
        """Start watching; inotify falls back to polling when its limits are reached."""
        if self.mode == "inotify":
            folders = count_folders(self.inbox) if self.watch.recursive else 1
            try:
                self._observer = self._start_observer(Observer())
            except OSError as err:
                if err.errno not in (errno.ENOSPC, errno.EMFILE):
                    raise
                # watchdog took back what it had added: try the folders once more
                probe = watchable_folders(self.inbox, folders)
                self._fall_back_to_polling(self._limit_reached(probe.watched, folders, err))
            else:
                watches = watches_held()
                if watches is not None and watches < folders:
                    self._check_skipped_folders(watches, folders)
        if self.mode == "poll":
            self._observer = self._start_observer(PollingObserver(timeout=self.watch.poll_interval))
        else:
            WATCHDOG_LOGGER.addHandler(self._overflow_hook)
        log.info("watching %s (%s, recursive=%s)", self.inbox, self.mode, self.watch.recursive)

    def _check_skipped_folders(self, watches: int, folders: int) -> None:
        """watchdog watches fewer folders than there are, without a word: the watch
        limit, or folders it cannot read (or that vanished since they were counted).
        A probe with the watches let go tells which; only the limit means polling."""
        self.stop()
        probe = watchable_folders(self.inbox, folders)
        if probe.full:
            self._fall_back_to_polling(self._limit_reached(watches, folders, None))
            return
        log.info(
            "inotify watches %d of the %d folders in %s: the others cannot be read "
            "(or are gone); the watch limit is not reached",
            probe.watched,
            folders,
            self.inbox,
        )
        self._observer = self._start_observer(Observer())

    def _limit_reached(self, watched: int, folders: int, err: OSError | None) -> str:
        """What inotify managed, in words that are true however watchdog reacted."""
        if watched == 0:
            why = err.strerror if err is not None else "the watch limit is reached"
            return f"inotify cannot watch the inbox {self.inbox} itself ({why})"
        if watched >= folders:  # the limit was reached, and freed again since
            return f"inotify could not watch all {folders} folders in {self.inbox} ({err})"
        return (
            f"inotify can watch only {watched} of the {folders} folders in {self.inbox} "
            "(the watch limit is reached)"
        )

    def _start_observer(self, observer: BaseObserver) -> BaseObserver:
        observer.schedule(
            _Handler(self.changes, self.inbox), str(self.inbox), recursive=self.watch.recursive
        )
        observer.daemon = True
        try:
            observer.start()
        except BaseException:
            observer.stop()
            raise
        return observer

    def _fall_back_to_polling(self, why: str) -> None:
        log.warning(
            "%s; polling instead, every %gs (fs.inotify.max_user_watches is %s, "
            "max_user_instances %s). Raise them, e.g. `sysctl fs.inotify.max_user_watches=524288`"
            ", and restart stemd to use inotify again",
            why,
            self.watch.poll_interval,
            read_sysctl("fs/inotify/max_user_watches"),
            read_sysctl("fs/inotify/max_user_instances"),
        )
        self.mode = "poll"

    def stop(self, timeout: float = 5.0) -> None:
        WATCHDOG_LOGGER.removeHandler(self._overflow_hook)
        if self._observer is None:
            return
        self._observer.stop()
        self._observer.join(timeout)
        if self._observer.is_alive():
            log.warning("the inbox observer did not stop within %.0fs", timeout)
        self._observer = None

    @property
    def stopped(self) -> bool:
        return self._observer is None

    def is_alive(self) -> bool:
        """The observer thread and its emitter (which dies when its folder does) run."""
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        return all(emitter.is_alive() for emitter in observer.emitters)

    def flush(self, timeout: float = 1.0) -> None:
        """Wait (bounded) until the observer has handed on every event its emitters
        queued: an emitter whose folder was deleted queues that event and dies,
        and stopping the observer before it is dispatched would lose it."""
        observer = self._observer
        deadline = time.monotonic() + timeout
        while (
            observer is not None
            and observer.is_alive()
            and observer.event_queue.unfinished_tasks
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)  # watchdog offers no wait with a timeout for this

    def drain(self, limit: int = 10000) -> list[FsChange]:
        out: list[FsChange] = []
        while len(out) < limit:
            try:
                out.append(self.changes.get_nowait())
            except queue.Empty:
                break
        return out

    def scan(self, folder: Path | None = None) -> Iterator[Path]:
        """Every regular file below `folder` (default: the inbox), ignored folders pruned."""
        yield from scan_tree(
            folder or self.inbox, self.inbox, self.watch.recursive, self.watch.ignore
        )


def scan_tree(
    folder: Path, inbox: Path, recursive: bool, extra_ignore: tuple[str, ...] = ()
) -> Iterator[Path]:
    """Regular files below `folder`, never following symlinks, ignored folders pruned."""
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as err:
            log.warning("cannot scan %s: %s", current, err.strerror)
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    relative = PurePath(os.path.relpath(path, inbox))
                    if recursive and not dir_ignored(relative, extra_ignore):
                        stack.append(path)
                else:
                    yield path  # files, and symlinks/FIFOs the caller refuses with a reason
            except OSError:
                continue
