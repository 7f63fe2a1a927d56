"""Real watchdog observers (inotify and polling) on temporary folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from stemd.config import WatchConfig
from stemd.watcher import Change, FsChange, InboxWatcher, choose_mode, fs_type_from_mountinfo
from support.waiting import wait_until


def collect(watcher: InboxWatcher, seen: list[FsChange]) -> list[FsChange]:
    seen.extend(watcher.drain())
    return seen


def wait_for(watcher: InboxWatcher, seen: list[FsChange], kind: Change, path: Path) -> None:
    wait_until(
        lambda: any(c.kind is kind and c.path == path for c in collect(watcher, seen)),
        10,
        f"{kind.value} {path.name}",
    )


@pytest.fixture
def inotify(tmp_path: Path) -> InboxWatcher:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watcher = InboxWatcher(inbox, WatchConfig(mode="inotify"))
    watcher.start()
    yield watcher
    watcher.stop()


def test_inotify_reports_written_then_closed(inotify: InboxWatcher) -> None:
    seen: list[FsChange] = []
    path = inotify.inbox / "a.wav"
    with open(path, "wb") as file:
        file.write(b"data")
        file.flush()
        wait_for(inotify, seen, Change.WRITTEN, path)
        assert not any(c.kind is Change.CLOSED for c in seen), "closed while still open"
    wait_for(inotify, seen, Change.CLOSED, path)


def test_inotify_sees_moves_in_and_out_and_deletes(inotify: InboxWatcher, tmp_path: Path) -> None:
    seen: list[FsChange] = []
    outside = tmp_path / "b.wav"
    outside.write_bytes(b"x")
    os.rename(outside, inotify.inbox / "b.wav")
    wait_for(inotify, seen, Change.CREATED, inotify.inbox / "b.wav")
    assert not any(c.kind is Change.WRITTEN for c in seen), "a rename writes nothing"
    os.rename(inotify.inbox / "b.wav", inotify.inbox / "c.wav")
    wait_for(inotify, seen, Change.GONE, inotify.inbox / "b.wav")
    wait_for(inotify, seen, Change.CLOSED, inotify.inbox / "c.wav")
    (inotify.inbox / "c.wav").unlink()
    wait_for(inotify, seen, Change.GONE, inotify.inbox / "c.wav")


def test_a_folder_moved_in_is_announced_and_scanned(inotify: InboxWatcher, tmp_path: Path) -> None:
    album = tmp_path / "album"
    (album / "cd1").mkdir(parents=True)
    (album / "cd1" / "t1.flac").write_bytes(b"x")
    (album / "t2.flac").write_bytes(b"y")
    seen: list[FsChange] = []
    os.rename(album, inotify.inbox / "album")
    wait_for(inotify, seen, Change.DIR_ADDED, inotify.inbox / "album")
    assert sorted(p.name for p in inotify.scan(inotify.inbox / "album")) == ["t1.flac", "t2.flac"]


def test_scan_prunes_ignored_folders_and_does_not_follow_symlinks(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "@eaDir").mkdir(parents=True)
    (inbox / "@eaDir" / "thumb.mp3").write_bytes(b"x")
    (inbox / "keep.mp3").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.mp3").write_bytes(b"x")
    (inbox / "link").symlink_to(outside)
    found = sorted(p.name for p in InboxWatcher(inbox, WatchConfig()).scan())
    assert found == ["keep.mp3", "link"]  # the link itself is reported (and refused later)


def test_non_recursive_watch_scans_the_top_only(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    (inbox / "sub" / "deep.mp3").write_bytes(b"x")
    (inbox / "top.mp3").write_bytes(b"x")
    found = [p.name for p in InboxWatcher(inbox, WatchConfig(recursive=False)).scan()]
    assert found == ["top.mp3"]


def test_polling_observer_sees_new_files(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watcher = InboxWatcher(inbox, WatchConfig(mode="poll", poll_interval=0.2))
    assert not watcher.require_close
    watcher.start()
    try:
        seen: list[FsChange] = []
        shutil.copyfile(__file__, inbox / "x.mp3")
        wait_for(watcher, seen, Change.CREATED, inbox / "x.mp3")
    finally:
        watcher.stop()
    assert not watcher.is_alive()


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /mnt/nas rw,relatime shared:20 - nfs4 nas:/music rw,vers=4.2
41 22 0:36 / /mnt/smb\\040share rw - cifs //nas/share rw
42 22 0:37 / /mnt/cloud rw - fuse.rclone cloud: rw
"""


@pytest.mark.parametrize(
    ("path", "fs_type"),
    [
        ("/home/me/inbox", "ext4"),
        ("/mnt/nas/inbox", "nfs4"),
        ("/mnt/smb share/in", "cifs"),
        ("/mnt/cloud/drop", "fuse.rclone"),
        ("/mnt/nasty", "ext4"),
    ],
)
def test_mount_type_is_read_from_the_longest_mount_point(path: str, fs_type: str) -> None:
    assert fs_type_from_mountinfo(MOUNTINFO, path) == fs_type


def test_auto_mode_uses_inotify_on_a_local_disk(tmp_path: Path) -> None:
    assert choose_mode("auto", tmp_path) == "inotify"
    assert choose_mode("poll", tmp_path) == "poll"
