"""Intake from the watcher: the inbox's watchdog observer, the files settling,
the scans, the inbox and outbox coming and going, and each settled file
registered in the ledger as a pending input (a worker's intake hashes it).

Runs on the main loop (`InboxFeed.tick`). A scan asks the ledger which files it
has seen one folder at a time (`Ledger.known_versions`), not one file at a time,
and beats between folders: a big inbox on a LAN database costs a query per
folder, and the daemon's signs of life (stemd.service.liveness) never wait on it.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path, PurePath

from stemd.config import Config
from stemd.folders import FolderEvent, SharedFolders
from stemd.intake import stat_of
from stemd.ledger import FileStat, Ledger, LedgerUnavailable
from stemd.logs import event
from stemd.settle import Settler, ignore_reason
from stemd.watcher import Change, InboxWatcher

log = logging.getLogger("stemd")

FOLDER_CHECK_INTERVAL_S = 1.0
# an unreachable ledger is tried at least this often by a scan it cut short
LEDGER_RETRY_MAX_S = 10.0
# files asked about in one query: well under SQLite's 32 766 parameters, and a
# query short enough that the liveness thread's lease renewal never waits long
# for the connection
KNOWN_BATCH = 500


class InboxFeed:
    """Owns the watcher (its observer thread is stopped and joined by `stop`)."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        folders: SharedFolders,
        wake: Callable[[], None],
        beat: Callable[[], None],
    ) -> None:
        """`wake()` tells the workers there is work (or a folder is back);
        `beat()` says the main loop moves, from inside a long scan."""
        self.config = config
        self.ledger = ledger
        self.folders = folders
        self._wake = wake
        self._beat = beat
        self.watcher: InboxWatcher | None = None
        self.settler: Settler | None = None
        self._unregistered: list[Path] = []  # settled while the ledger was away
        self._next_rescan = 0.0
        self._next_folder_check = 0.0

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Watch the inbox and scan it for files dropped while stemd was stopped."""
        self.watcher = InboxWatcher(self.config.inbox, self.config.watch)
        self.watcher.start()  # first: it may fall back from inotify to polling
        self.settler = Settler(self.config.watch.settle, require_close=self.watcher.require_close)
        try:
            self.scan(self.config.inbox)
        except LedgerUnavailable:
            return  # watching anyway; scan set the next rescan to the ledger's next try
        self._next_rescan = time.monotonic() + self.config.watch.rescan_interval

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()

    def reconfigure(self, new: Config, folders: SharedFolders) -> None:
        """A reload: new inbox or watch settings restart the watcher. Queued jobs
        live in the ledger and are kept; files still settling are found again by
        the new watcher's scan (cut short by an unreachable ledger, it is tried
        again on the ledger's pace)."""
        old, self.config, self.folders = self.config, new, folders
        if new.inbox != old.inbox or new.watch != old.watch:
            log.info("inbox or watch settings changed; restarting the watcher")
            self.stop()
            self.start()

    def settling(self) -> int:
        """Files seen that are not pending inputs yet (for the node report)."""
        if self.settler is None:
            return 0
        return len(self.settler) + len(self._unregistered)

    # -- the main loop's share ----------------------------------------------------------

    def tick(self, now: float) -> None:
        """Folder checks, events, the periodic rescan, and files that have
        settled. Raises LedgerUnavailable."""
        assert self.watcher is not None
        if now >= self._next_folder_check:
            self._next_folder_check = now + FOLDER_CHECK_INTERVAL_S
            self._check_folders()  # an inbox back is scanned: that asks the ledger
        if not self.watcher.stopped:  # stopped while the inbox is away
            self._take_in(now)

    def _take_in(self, now: float) -> None:
        assert self.settler is not None
        self._apply_changes()
        if now >= self._next_rescan:
            self.scan(self.config.inbox)
            self._next_rescan = now + self.config.watch.rescan_interval
        # files that settled while the ledger was away come first: the settler
        # has let go of them, and without this they would wait for the next
        # rescan (watch.rescan_interval)
        waiting = [*self._unregistered, *self.settler.poll()]
        for done, path in enumerate(waiting):
            try:
                self._register(path)
            except LedgerUnavailable:
                if len(waiting) - done != len(self._unregistered):
                    log.debug("%d settled file(s) wait for the ledger", len(waiting) - done)
                self._unregistered = waiting[done:]
                raise
        self._unregistered = []

    # -- shared folders ---------------------------------------------------------------

    def _check_folders(self) -> None:
        """Log a vanished or returning inbox/outbox; rewatch an inbox that is back.

        The worker waits by itself while one is missing (it asks the same
        SharedFolders), so jobs are neither failed nor lost meanwhile.
        """
        assert self.watcher is not None
        for change in self.folders.check():
            if change.event is FolderEvent.GONE:
                log.error(
                    "the %s %s is gone (an unmounted share, a pulled disk, deleted?): "
                    "pausing; queued files wait and stemd resumes by itself when it is back",
                    change.name,
                    change.path,
                )
            else:
                how = "is back" if change.event is FolderEvent.BACK else "was replaced (remounted?)"
                log.warning("the %s %s %s; resuming", change.name, change.path, how)
            if change.name == "inbox":
                self.watcher.stop()  # its watches belong to the old folder
            self._wake()
        if not self.watcher.stopped and not self.watcher.is_alive():
            # A deleted inbox ends its emitter: take in what it said last, so the
            # deletion is handled (and logged) as such, not as a watcher crash.
            self.watcher.flush()
            self._apply_changes()
        if not self.watcher.stopped and not self.watcher.is_alive():
            log.warning("the inbox watcher stopped unexpectedly; starting it again")
            self.watcher.stop()
        if self.watcher.stopped and "inbox" not in self.folders.missing():
            try:
                self.start()  # new watches, and a scan of what it holds
            except OSError as err:
                log.warning("cannot watch %s yet (%s); trying again", self.config.inbox, err)

    # -- events and scans -------------------------------------------------------------

    def _apply_changes(self) -> None:
        assert self.watcher is not None and self.settler is not None
        for change in self.watcher.drain():
            if change.kind is Change.CREATED:
                self.settler.created(change.path)
            elif change.kind is Change.WRITTEN:
                self.settler.written(change.path)
            elif change.kind is Change.CLOSED:
                self.settler.closed(change.path)
            elif change.kind is Change.GONE:
                self.settler.forget(change.path)
            elif change.kind is Change.DIR_ADDED and self.config.watch.recursive:
                self.scan(change.path)
            elif change.kind is Change.DIR_GONE:
                self.settler.forget_under(change.path)
            elif change.kind is Change.OVERFLOW:
                log.warning(
                    "inotify dropped events (its queue overflowed; see "
                    "fs.inotify.max_queued_events): rescanning %s now",
                    self.config.inbox,
                )
                self.scan(self.config.inbox)
            elif change.kind is Change.INBOX_DELETED:
                log.error(
                    "the inbox %s was deleted: pausing; stemd watches it again when it is back",
                    change.path,
                )
                self.folders.forget("inbox")
                self.watcher.stop()
                return

    def scan(self, folder: Path) -> None:
        """Every file below `folder` the ledger has not seen in this version starts
        settling. The ledger is asked a folder (at most KNOWN_BATCH files) at a
        time; the scan beats between. Raises LedgerUnavailable (the rescan is then
        tried again within LEDGER_RETRY_MAX_S)."""
        assert self.watcher is not None and self.settler is not None
        started = time.monotonic()
        batch: list[tuple[Path, FileStat]] = []
        files = new = 0
        for path in self.watcher.scan(folder):
            files += 1
            if batch and (path.parent != batch[0][0].parent or len(batch) >= KNOWN_BATCH):
                new += self._settle_unknown(batch)
                batch = []
            if path in self.settler:
                continue
            try:
                batch.append((path, stat_of(path)))
            except OSError:
                continue
        new += self._settle_unknown(batch)
        log.debug(
            "scanned %s: %d files (%d new) in %.1fs", folder, files, new, time.monotonic() - started
        )

    def _settle_unknown(self, batch: list[tuple[Path, FileStat]]) -> int:
        """The files of one folder the ledger does not know (as they are now)
        start settling; how many."""
        if not batch:
            return 0
        self._beat()
        try:
            known = self.ledger.known_versions(batch)
        except LedgerUnavailable:
            self._next_rescan = time.monotonic() + LEDGER_RETRY_MAX_S  # try again soon
            raise
        assert self.settler is not None
        unknown = [path for path, _stat in batch if path not in known]
        for path in unknown:
            self.settler.found(path)
        return len(unknown)

    def _register(self, path: Path) -> None:
        """A settled path: refuse it with a reason, or record it for the worker."""
        relative = PurePath(os.path.relpath(path, self.config.inbox))
        if relative.parts and relative.parts[0] == "..":
            return
        reason = ignore_reason(relative, self.config.watch.extensions, self.config.watch.ignore)
        if reason is not None:
            log.debug("ignored %s: %s", relative, reason)
            return
        try:
            info = os.lstat(path)
        except OSError:
            return
        if not stat.S_ISREG(info.st_mode):
            kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a regular file"
            event(
                logging.WARNING,
                "ignored",
                f"{relative}: ignored, {kind}",
                source=relative.as_posix(),
            )
            return
        record = self.ledger.add_input(path, relative.as_posix(), FileStat.of(info))
        if record is not None:
            log.debug("settled: %s", relative)
            self._wake()
