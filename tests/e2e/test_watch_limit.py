"""inotify's watch limit reached: stemd says so truthfully and polls instead of going deaf.

The daemon runs in its own user namespace, where /proc/sys/user/max_inotify_watches
is that namespace's own limit: the test lowers it without touching the machine's.
How many folders inotify really watches under that limit is measured apart from
stemd (support.inotify), so the test holds whether this machine's watchdog raises at
the limit or skips folders silently (tests/integration/test_watch_limit_kinds.py
makes watchdog do each).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support.audio import make_tone
from support.daemon import Daemon, service_config
from support.inotify import limited, needs_userns, watchable
from support.waiting import wait_until

GENRES = ("rock", "jazz", "pop", "folk", "soul")  # with the inbox: 6 folders to watch


@needs_userns
@pytest.mark.parametrize("limit", [3, 0])
def test_reaching_the_inotify_watch_limit_falls_back_to_polling(tmp_path: Path, limit: int) -> None:
    inbox = tmp_path / "inbox"
    for name in GENRES:
        (inbox / name).mkdir(parents=True)
    truth = watchable(limit, inbox)
    assert truth == 0 if limit == 0 else 0 < truth < 6  # the limit bites, in the middle
    config = service_config(
        tmp_path,
        # a rescan too rare to be what finds the file: only polling can
        watch={"settle": "0.5s", "mode": "inotify", "poll_interval": "1s", "rescan_interval": "1h"},
    )
    daemon = Daemon(config, tmp_path, prefix=limited(limit)).start()
    try:
        daemon.wait_ready()
        log = daemon.log()
        if truth == 0:
            assert f"inotify cannot watch the inbox {inbox} itself" in log
        else:
            assert f"inotify can watch only {truth} of the 6 folders in {inbox}" in log
            assert "cannot watch the inbox" not in log  # it did watch the inbox
        assert "polling instead, every 1s" in log and "fs.inotify.max_user_watches" in log
        assert f"watching {inbox} (poll, recursive=True)" in log

        # a folder inotify never got to watch
        staged = make_tone(tmp_path / "staging" / "late.wav", 1.0)
        shutil.copyfile(staged, inbox / "soul" / "late.wav")
        wait_until(lambda: daemon.report()["counts"]["done"] == 1, 60, "late.wav by polling")
        assert daemon.stop() == 0
    finally:
        daemon.kill()


@needs_userns
def test_below_the_limit_inotify_is_kept(tmp_path: Path) -> None:
    (tmp_path / "inbox" / "rock").mkdir(parents=True)  # 2 folders, 3 allowed
    config = service_config(tmp_path, watch={"settle": "0.5s", "mode": "inotify"})
    daemon = Daemon(config, tmp_path, prefix=limited(3)).start()
    try:
        daemon.wait_ready()
        assert f"watching {tmp_path / 'inbox'} (inotify, recursive=True)" in daemon.log()
        assert "polling instead" not in daemon.log()
        assert daemon.stop() == 0
    finally:
        daemon.kill()
