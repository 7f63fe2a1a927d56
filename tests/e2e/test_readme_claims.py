"""What the README promises about lost ledgers, network shares, duplicates and
unreadable files, each tried for real."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from support.audio import make_tone
from support.daemon import Daemon, service_config
from support.instrumented_model import RECORDER, instrumented_model, model_env, record_in
from support.mounts import bind_mount, fuse_share, needs_root
from support.published import manifest_in, published
from support.waiting import wait_until

SECONDS = 1.0
STEMS = ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]


def track(root: Path, relative: str) -> Path:
    return root / "outbox" / RECORDER / relative


def published_at(root: Path, relative: str) -> bool:
    return published(track(root, relative))


def manifest(root: Path, relative: str) -> dict[str, Any]:
    found = manifest_in(track(root, relative))
    assert found is not None, f"{relative} is not published"
    return found


def recorder_daemon(root: Path, repo: Path, **sections: object) -> Daemon:
    """A daemon (not started) on the instrumented model that records each
    separation into `record_in(root)`."""
    config = service_config(root, model=instrumented_model(repo), **sections)
    return Daemon(config, root, env=model_env(root)[0])


@pytest.mark.slow
def test_a_ledger_moved_aside_does_not_get_the_stems_written_twice(
    tmp_path: Path, instrumented_repo: Path
) -> None:
    daemon = recorder_daemon(tmp_path, instrumented_repo)
    record = record_in(tmp_path)
    song = make_tone(tmp_path / "s" / "song.wav", SECONDS)
    try:
        daemon.start().wait_ready()
        shutil.copyfile(song, tmp_path / "inbox" / "song.wav")
        wait_until(lambda: published_at(tmp_path, "song"), 60, "song.wav")
        first = manifest(tmp_path, "song")
        assert daemon.stop() == 0

        # The README's way out of a damaged ledger: stop, move it aside, start.
        aside = tmp_path / "damaged"
        aside.mkdir()
        for file in (tmp_path / "state").glob("ledger.sqlite*"):
            file.rename(aside / file.name)
        daemon.start().wait_ready()
        wait_until(lambda: daemon.report()["counts"]["done"] == 1, 60, "song.wav recognised")
        assert record.count(SECONDS) == 1  # separated once, before the ledger was lost
        assert sorted(p.name for p in (tmp_path / "outbox" / RECORDER).iterdir()) == ["song"]
        assert manifest(tmp_path, "song") == first  # not rewritten
        assert "song.wav: stems already in recorder/song" in daemon.log()
        assert daemon.stop() == 0
    finally:
        daemon.kill()


@needs_root
def test_an_inbox_on_a_fuse_mount_is_polled_and_sees_writes_behind_the_mount(
    tmp_path: Path, instrumented_repo: Path
) -> None:
    backing, inbox = tmp_path / "nas-disk", tmp_path / "inbox"
    with fuse_share(backing, inbox):
        # watch.mode auto, and no periodic rescan within the test: only polling can
        # find a file that another host writes into the share.
        daemon = recorder_daemon(
            tmp_path,
            instrumented_repo,
            watch={"mode": "auto", "poll_interval": "0.5s", "settle": "0.5s"},
        )
        try:
            daemon.start().wait_ready()
            shutil.copyfile(make_tone(tmp_path / "s" / "song.wav", SECONDS), backing / "song.wav")
            wait_until(
                lambda: published_at(tmp_path, "song"), 60, "a file written behind the mount"
            )
            assert manifest(tmp_path, "song")["source"] == "song.wav"
            assert f"watching {inbox} (poll" in daemon.log()
            assert daemon.stop() == 0
        finally:
            daemon.kill()


@pytest.mark.parametrize("mode", ["copy", "skip"])
def test_duplicates_copy_or_skip_as_configured(
    tmp_path: Path, instrumented_repo: Path, mode: str
) -> None:
    daemon = recorder_daemon(tmp_path, instrumented_repo, output={"duplicates": mode})
    record = record_in(tmp_path)
    try:
        daemon.start().wait_ready()
        shutil.copyfile(make_tone(tmp_path / "s" / "song.wav", SECONDS), tmp_path / "inbox/a.wav")
        wait_until(lambda: published_at(tmp_path, "a"), 60, "a.wav")
        shutil.copyfile(tmp_path / "inbox/a.wav", tmp_path / "inbox/b.wav")
        wait_until(lambda: "b.wav: same" in daemon.log(), 60, "the copy to be recognised")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    assert record.count(SECONDS) == 1
    if mode == "skip":
        assert "b.wav: same as recorder/a; not written (output.duplicates: skip)" in daemon.log()
        assert not track(tmp_path, "b").exists()
        return
    assert manifest(tmp_path, "b")["duplicate_of"] == "recorder/a"
    for name in STEMS:
        original, copy = track(tmp_path, "a") / name, track(tmp_path, "b") / name
        assert copy.read_bytes() == original.read_bytes()
        assert copy.stat().st_ino != original.stat().st_ino  # a copy, not a link
        assert copy.stat().st_nlink == 1


def test_on_conflict_skip_decides_before_separating(
    tmp_path: Path, instrumented_repo: Path
) -> None:
    """A name taken by other stems, with on_conflict: skip: nothing is separated
    only to be thrown away, and what is there stays as it was."""
    daemon = recorder_daemon(tmp_path, instrumented_repo, output={"on_conflict": "skip"})
    record = record_in(tmp_path)
    theirs = track(tmp_path, "song")
    theirs.mkdir(parents=True)
    (theirs / "vocals.wav").write_bytes(b"someone else's stems")
    try:
        daemon.start().wait_ready()
        shutil.copyfile(
            make_tone(tmp_path / "s" / "song.wav", SECONDS), tmp_path / "inbox/song.wav"
        )
        wait_until(lambda: "not written (output.on_conflict: skip)" in daemon.log(), 60, "the skip")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    assert record.count(SECONDS) == 0  # the model never ran on it
    assert "song.wav: separating" not in daemon.log()
    assert sorted(p.name for p in theirs.iterdir()) == ["vocals.wav"]
    assert (theirs / "vocals.wav").read_bytes() == b"someone else's stems"


@needs_root
def test_stems_that_cannot_be_hard_linked_are_copied(
    tmp_path: Path, instrumented_repo: Path
) -> None:
    daemon = recorder_daemon(tmp_path, instrumented_repo)  # duplicates: link
    record = record_in(tmp_path)
    song = make_tone(tmp_path / "s" / "song.wav", SECONDS)
    (tmp_path / "inbox" / "old").mkdir()
    try:
        daemon.start().wait_ready()
        shutil.copyfile(song, tmp_path / "inbox/old/song.wav")
        wait_until(lambda: published_at(tmp_path, "old/song"), 60, "old/song.wav")
        # The existing stems now live on another filesystem than the outbox's own
        # (a folder moved to a second disk): a hard link to them fails with EXDEV.
        with bind_mount(track(tmp_path, "old")):
            (tmp_path / "inbox" / "new").mkdir()
            shutil.copyfile(song, tmp_path / "inbox/new/song.wav")
            wait_until(lambda: published_at(tmp_path, "new/song"), 60, "new/song.wav")
            for name in STEMS:
                original = track(tmp_path, "old/song") / name
                copy = track(tmp_path, "new/song") / name
                assert copy.read_bytes() == original.read_bytes()
                assert copy.stat().st_ino != original.stat().st_ino
            assert daemon.stop() == 0
    finally:
        daemon.kill()
    assert manifest(tmp_path, "new/song")["duplicate_of"] == "recorder/old/song"
    assert record.count(SECONDS) == 1
    assert "cannot reuse" not in daemon.log()


# Root reads any file; a service user reads only what its permissions allow. The
# daemon runs as root without the two capabilities that let root read other
# users' files, so it meets a mode-0600 file of another user as a service user
# would. (runuser to a real service user would need an interpreter that user can
# reach; this checkout's lies under root's home.)
WITHOUT_ROOTS_READ_RIGHTS = [
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
    "--",
]
NOBODY = 65534


@needs_root
@pytest.mark.slow
def test_an_unreadable_input_fails_with_the_reason_and_is_left_in_place(
    tmp_path: Path, instrumented_repo: Path
) -> None:
    daemon = recorder_daemon(tmp_path, instrumented_repo)
    daemon.prefix = WITHOUT_ROOTS_READ_RIGHTS
    record = record_in(tmp_path)
    try:
        daemon.start().wait_ready()
        good = make_tone(tmp_path / "s" / "good.wav", SECONDS)
        locked = make_tone(tmp_path / "s" / "locked.wav", 1.5, frequency=700)
        locked.chmod(0o600)
        os.chown(locked, NOBODY, NOBODY)  # another user's file, for that user alone
        shutil.copyfile(good, tmp_path / "inbox" / "good.wav")
        shutil.move(locked, tmp_path / "inbox" / "locked.wav")
        wait_until(
            lambda: published_at(tmp_path, "good") and daemon.report()["failed"],
            60,
            "good.wav published and locked.wav failed",
        )
        [failed] = daemon.status()["failed"]
        assert failed["source"] == "locked.wav"
        assert "Permission denied" in failed["error"]
        assert any("locked.wav" in line and "ERROR" in line for line in daemon.log().splitlines())
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    assert record.count(1.5) == 0 and record.count(SECONDS) == 1
    assert not track(tmp_path, "locked").exists()
    assert (tmp_path / "inbox" / "locked.wav").stat().st_uid == NOBODY  # left where it was
