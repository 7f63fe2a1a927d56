"""Inputs that change under stemd: deleted after detection, rewritten while
separated, rewritten while hashed. Each is named in the log with what happened,
and the version that ends up in the inbox is the one that counts."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from support.audio import make_tone
from support.daemon import Daemon, service_config
from support.instrumented_model import gated_daemon
from support.published import manifests_under
from support.waiting import wait_until


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifests(outbox: Path) -> dict[str, dict[str, Any]]:
    """Published tracks of every model's folder, by track name."""
    return {
        track: manifest
        for model_dir in outbox.iterdir()
        if model_dir.is_dir()
        for track, manifest in manifests_under(model_dir).items()
    }


def test_files_deleted_before_their_turn_end_with_the_reason(tmp_path: Path) -> None:
    daemon, _config, gate = gated_daemon(tmp_path)
    inbox = tmp_path / "inbox"
    daemon.start()
    try:
        daemon.wait_ready()
        # Moved in as one folder, both settle together and are hashed before the
        # first job starts; that job then hangs in the model.
        make_tone(tmp_path / "album" / "a.wav", 1.0)
        make_tone(tmp_path / "album" / "b.wav", 1.0, frequency=500)
        make_tone(tmp_path / "s" / "pending.wav", 1.0, frequency=600)
        (tmp_path / "album").rename(inbox / "album")
        wait_until((gate / "entered").exists, 60, "the first job in the model")
        log = daemon.log()
        assert "album/a.wav: new input" in log and "album/b.wav: new input" in log
        running = "a.wav" if "album/a.wav: separating" in log else "b.wav"
        hashed = "b.wav" if running == "a.wav" else "a.wav"
        # Registered but not yet read: the worker hashes it after the running job.
        shutil.copyfile(tmp_path / "s" / "pending.wav", inbox / "pending.wav")
        wait_until(lambda: daemon.report()["counts"]["queued"] == 2, 30, "pending.wav registered")
        (inbox / "album" / hashed).unlink()
        (inbox / "pending.wav").unlink()
        (gate / "open").touch()
        wait_until(
            lambda: "pending.wav: vanished" in daemon.log() and daemon.report()["counts"]["failed"],
            60,
            "both jobs to end",
        )
        status = daemon.status()
        assert status["counts"] == {"queued": 0, "running": 0, "done": 1, "failed": 1}
        assert [f["source"] for f in status["failed"]] == [f"album/{hashed}"]
        assert (
            "source file is gone or changed before it was separated" in status["failed"][0]["error"]
        )
        assert "pending.wav: vanished before it was read" in daemon.log()
        assert daemon.stop() == 0
    finally:
        (gate / "open").touch()
        daemon.kill()


def test_a_file_rewritten_while_separated_gets_both_versions_separated(tmp_path: Path) -> None:
    daemon, _config, gate = gated_daemon(tmp_path)
    song = tmp_path / "inbox" / "song.wav"
    daemon.start()
    try:
        daemon.wait_ready()
        shutil.copyfile(make_tone(tmp_path / "s" / "v1.wav", 1.0, frequency=300), song)
        first = sha256(song)
        wait_until((gate / "entered").exists, 60, "song.wav in the model")
        # Rewritten in place (same name, same inode) while the model works on it.
        song.write_bytes(make_tone(tmp_path / "s" / "v2.wav", 1.5, frequency=700).read_bytes())
        second = sha256(song)
        (gate / "open").touch()
        wait_until(lambda: daemon.report()["counts"]["done"] == 2, 60, "both versions")
        found = manifests(tmp_path / "outbox")
        # What was read is published as it was read; the new bytes are a new job.
        assert sorted(m["sha256"] for m in found.values()) == sorted([first, second])
        assert found["song"]["sha256"] == first and found["song (2)"]["sha256"] == second
        assert daemon.status()["counts"]["failed"] == 0
        assert daemon.stop() == 0
    finally:
        (gate / "open").touch()
        daemon.kill()


def open_by(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open right now."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


# A sparse file: no disk used, yet hashing reads every byte of it, which takes
# seconds, a window the test cannot miss.
SPARSE_SIZE = 8 << 30


def test_a_file_rewritten_while_hashed_is_hashed_again_once_it_settles(tmp_path: Path) -> None:
    config = service_config(tmp_path, watch={"settle": "0.5s", "max_file_size": "16GiB"})
    daemon = Daemon(config, tmp_path).start()
    big = tmp_path / "s" / "big.wav"
    big.parent.mkdir()
    with open(big, "wb") as out:
        out.truncate(SPARSE_SIZE)
    small = make_tone(tmp_path / "s" / "small.wav", 1.0, frequency=900)
    target = tmp_path / "inbox" / "track.wav"
    try:
        daemon.wait_ready()
        assert daemon.process is not None
        pid = daemon.process.pid
        big.rename(target)
        wait_until(lambda: open_by(pid, target), 60, "stemd to open track.wav", interval=0.05)
        daemon.signal(signal.SIGSTOP)  # frozen mid-hash
        try:
            assert open_by(pid, target), "the hash ended before stemd was frozen"
            with open(target, "r+b") as out:  # rewritten in place by another client
                out.write(small.read_bytes())
                out.truncate()
        finally:
            daemon.signal(signal.SIGCONT)
        wait_until(lambda: daemon.report()["counts"]["done"] == 1, 120, "the new version")
        assert "track.wav changed while it was hashed; waiting for it to settle" in daemon.log()
        found = manifests(tmp_path / "outbox")
        assert [m["sha256"] for m in found.values()] == [sha256(small)]
        assert daemon.stop() == 0
    finally:
        daemon.kill()
