"""inotify's watch limit reached: stemd says so and polls instead of going deaf.

The daemon runs in its own user namespace, where /proc/sys/user/max_inotify_watches
is that namespace's own limit: the test lowers it without touching the machine's.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from support.audio import make_tone
from support.daemon import Daemon, service_config
from support.waiting import wait_until


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
    """sh -c SCRIPT sh CMD...: set the namespace's limit, then become stemd."""
    script = f'echo {watches} > /proc/sys/user/max_inotify_watches && exec "$@"'
    return ["unshare", "--user", "--map-root-user", "sh", "-c", script, "sh"]


@needs_userns
@pytest.mark.parametrize(
    ("limit", "why"),
    [
        (3, "inotify watches only 3 of the 6 folders in"),  # watchdog skips the rest silently
        (0, "inotify cannot watch"),  # not even the inbox itself
    ],
)
def test_reaching_the_inotify_watch_limit_falls_back_to_polling(
    tmp_path: Path, limit: int, why: str
) -> None:
    for name in ("rock", "jazz", "pop", "folk", "soul"):  # 6 folders to watch, 3 allowed
        (tmp_path / "inbox" / name).mkdir(parents=True)
    config = service_config(
        tmp_path,
        # a rescan too rare to be what finds the file: only polling can
        watch={"settle": "0.5s", "mode": "inotify", "poll_interval": "1s", "rescan_interval": "1h"},
    )
    daemon = Daemon(config, tmp_path, prefix=limited(limit)).start()
    try:
        daemon.wait_ready()
        log = daemon.log()
        assert why in log
        assert "polling instead, every 1s" in log and "fs.inotify.max_user_watches" in log
        assert f"watching {tmp_path / 'inbox'} (poll, recursive=True)" in log

        # a folder inotify never got to watch
        staged = make_tone(tmp_path / "staging" / "late.wav", 1.0)
        shutil.copyfile(staged, tmp_path / "inbox" / "soul" / "late.wav")
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
