"""The state directory at start: unwritable, in use, locked or corrupt.

Each case ends in a clear message naming the folder or file and what to do,
exit code 69 (EX_UNAVAILABLE), and nothing changed on disk.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from support.audio import make_tone
from support.daemon import Daemon, service_config
from support.mounts import needs_root, tmpfs
from support.waiting import wait_until

EX_UNAVAILABLE = 69


def exits_with_error(daemon: Daemon, timeout: float = 60) -> tuple[int, str]:
    daemon.start()
    assert daemon.process is not None
    code = daemon.process.wait(timeout)
    return code, daemon.log()


@needs_root
def test_a_read_only_state_dir_is_named_with_what_to_do(tmp_path: Path) -> None:
    config = service_config(tmp_path)
    song = make_tone(tmp_path / "inbox" / "song.wav", 1.0)
    before = song.read_bytes()
    with tmpfs(tmp_path / "state", size="1m", readonly=True):
        code, log = exits_with_error(Daemon(config, tmp_path))
    assert code == EX_UNAVAILABLE, log
    assert f"state_dir {tmp_path / 'state'} is not writable (Read-only file system)" in log
    assert "set state_dir to a folder that is" in log
    assert "Traceback" not in log
    assert song.read_bytes() == before  # the inbox is untouched
    assert not (tmp_path / "outbox").exists() or not any((tmp_path / "outbox").iterdir())


def test_a_second_daemon_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    config = service_config(tmp_path)
    first = Daemon(config, tmp_path).start()
    try:
        first.wait_ready()
        second = Daemon(config, tmp_path)
        second.log_path = tmp_path / "second.log"
        code, log = exits_with_error(second)
        assert code == EX_UNAVAILABLE, log
        assert first.process is not None
        assert f"is in use by another stemd (pid {first.process.pid})" in log
        # the first one is unharmed and still serving
        make_tone(tmp_path / "inbox" / "after.wav", 1.0)
        wait_until(lambda: first.report()["counts"]["done"] == 1, 60, "the first daemon's job")
    finally:
        assert first.stop() == 0


def test_a_ledger_locked_by_another_process_is_named(tmp_path: Path) -> None:
    config = service_config(tmp_path)
    ledger = tmp_path / "state" / "ledger.sqlite"
    ledger.parent.mkdir()
    holder = sqlite3.connect(ledger, isolation_level=None)
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("CREATE TABLE keep (x)")
    holder.execute("BEGIN EXCLUSIVE")  # an sqlite3 shell left in a transaction
    try:
        code, log = exits_with_error(Daemon(config, tmp_path))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == EX_UNAVAILABLE, log
    assert f"{ledger}: the ledger is locked" in log and f"fuser {ledger}" in log
    assert "Traceback" not in log


def test_a_corrupt_ledger_is_left_as_it_is_with_what_to_do(tmp_path: Path) -> None:
    config = service_config(tmp_path)
    ledger = tmp_path / "state" / "ledger.sqlite"
    ledger.parent.mkdir()
    garbage = b"SQLite format 3\x00" + bytes(range(256)) * 64
    ledger.write_bytes(garbage)
    code, log = exits_with_error(Daemon(config, tmp_path))
    assert code == EX_UNAVAILABLE, log
    assert f"{ledger}: cannot open the ledger" in log and "move it aside" in log
    assert ledger.read_bytes() == garbage  # evidence kept for whoever looks into it
