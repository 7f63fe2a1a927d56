"""The watch-limit warning is true whichever way watchdog meets the limit.

watchdog either raises ENOSPC from `schedule()` (taking its watches back) or skips
the folders it cannot watch without a word; which one depends on its version and
the kernel. Here the real InboxWatcher starts in a user namespace whose watch limit
the test sets, with the locked watchdog made to do each in turn, and the count it
reports is held against the one measured apart (support.inotify).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.inotify import HOLD, limited, needs_userns, watchable
from support.mounts import needs_root

# argv: inbox, "skip" or "raise"[, a neighbour's folders]. Starts the real watcher with
# watchdog's reaction to a refused subfolder watch set to one of the two (after the
# neighbour took its watches); prints the mode it ends in.
START = (
    HOLD
    + r"""
import errno, logging, sys
from pathlib import Path
from watchdog.observers import inotify
from stemd.config import WatchConfig
from stemd.watcher import InboxWatcher

inbox, reaction = Path(sys.argv[1]), sys.argv[2]
add = inotify.InotifyWatchGroup._add_callback

def add_callback(self, path):
    try:
        add(self, path)
    except OSError as err:
        limit = err.errno in (errno.ENOSPC, errno.EMFILE)
        if reaction == "skip" and limit and path != self.path:
            return  # the folder stays unwatched, and nobody is told
        raise

inotify.InotifyWatchGroup._add_callback = add_callback
logging.basicConfig(level=logging.INFO, format="%(message)s")
watcher = InboxWatcher(inbox, WatchConfig(mode="inotify", poll_interval=1))
watcher.start()
print(watcher.mode)
watcher.stop()
"""
)


def start_watcher(
    limit: int | None,
    inbox: Path,
    reaction: str,
    neighbour: Path | None = None,
    without_dac: bool = False,
) -> tuple[str, str]:
    """The watcher's end mode and log, in a namespace with `limit` watches (None:
    the machine's, as the user stemd runs as)."""
    prefix = limited(limit) if limit is not None else []
    if without_dac:
        # root that file permissions bind, as stemd's own user is bound: still root,
        # so it reads its interpreter wherever the checkout lies (a 0700 temp folder)
        prefix = [*prefix, "setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    extra = [str(neighbour)] if neighbour is not None else []
    run = subprocess.run(
        [*prefix, sys.executable, "-c", START, str(inbox), reaction, *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.strip(), run.stderr


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    for name in ("a", "b", "c/d", "c/e"):  # with the inbox and c: 6 folders
        (tmp_path / "inbox" / name).mkdir(parents=True)
    return tmp_path / "inbox"


@needs_userns
@pytest.mark.parametrize("reaction", ["skip", "raise"])
def test_the_count_of_watched_folders_is_the_kernels(inbox: Path, reaction: str) -> None:
    truth = watchable(3, inbox)
    assert 0 < truth < 6
    mode, log = start_watcher(3, inbox, reaction)
    assert mode == "poll"
    assert f"inotify can watch only {truth} of the 6 folders in {inbox}" in log
    assert "cannot watch the inbox" not in log
    assert f"watching {inbox} (poll, recursive=True)" in log


@needs_userns
@pytest.mark.parametrize("reaction", ["skip", "raise"])
def test_an_inbox_that_cannot_be_watched_at_all_is_named(inbox: Path, reaction: str) -> None:
    assert watchable(0, inbox) == 0
    mode, log = start_watcher(0, inbox, reaction)
    assert mode == "poll"
    assert f"inotify cannot watch the inbox {inbox} itself" in log
    assert "can watch only" not in log


@needs_userns
def test_under_the_limit_inotify_watches_every_folder(inbox: Path) -> None:
    mode, log = start_watcher(6, inbox, "raise")
    assert mode == "inotify", log
    assert "polling instead" not in log


@needs_userns
@pytest.mark.parametrize("reaction", ["skip", "raise"])
def test_watches_a_neighbour_holds_are_not_counted_as_stemds(
    inbox: Path, tmp_path: Path, reaction: str
) -> None:
    """Another program of the same user holds 2 of the 6 watches: stemd gets 4 of
    its 6 folders, and says 4, not the limit."""
    neighbour = tmp_path / "neighbour"
    (neighbour / "x").mkdir(parents=True)
    truth = watchable(6, inbox, neighbour)
    assert truth == 4
    mode, log = start_watcher(6, inbox, reaction, neighbour)
    assert mode == "poll"
    assert f"inotify can watch only {truth} of the 6 folders in {inbox}" in log


@needs_root
def test_a_folder_stemd_cannot_read_is_not_the_watch_limit(tmp_path: Path) -> None:
    """A subfolder stemd may not read cannot be watched either; watchdog passes over
    it without a word. That is no reason to poll."""
    inbox = tmp_path / "inbox"
    for name in ("a", "b", "private"):
        (inbox / name).mkdir(parents=True)
    private = inbox / "private"
    os.chown(private, 65534, 65534)
    private.chmod(0o700)  # another user's alone
    mode, log = start_watcher(None, inbox, "raise", without_dac=True)
    assert mode == "inotify", log
    assert "inotify watches 3 of the 4 folders" in log and "cannot be read" in log
    assert "polling instead" not in log
