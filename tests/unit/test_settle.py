"""Ignore rules and the settle rule, on real files with a controlled clock."""

from __future__ import annotations

import os
from pathlib import Path, PurePath

import pytest

from stemd.config import DEFAULT_EXTENSIONS
from stemd.settle import Settler, dir_ignored, ignore_reason


@pytest.mark.parametrize(
    "relative",
    [
        ".hidden.mp3",
        "song.mp3.part",
        "song.crdownload",
        "x.tmp",
        "~$song.wav",
        "~syncthing~song.mp3.tmp",
        ".syncthing.song.mp3.tmp",
        "@eaDir/song.mp3",
        "#recycle/song.mp3",
        ".AppleDouble/song.mp3",
        "Thumbs.db",
        "desktop.ini",
        "album/.hidden/song.mp3",
        "notes.txt",
        "cover.jpg",
        "noextension",
    ],
)
def test_builtin_ignores(relative: str) -> None:
    assert ignore_reason(PurePath(relative), DEFAULT_EXTENSIONS) is not None


@pytest.mark.parametrize(
    "relative", ["song.mp3", "Album/Track 01.FLAC", "a/b/c.m4a", "-i.wav", "🎸.ogg"]
)
def test_audio_files_pass(relative: str) -> None:
    assert ignore_reason(PurePath(relative), DEFAULT_EXTENSIONS) is None


def test_extra_patterns_match_names_and_paths() -> None:
    extra = ("*.demo.*", "drafts", "live/*.wav")
    assert "demo" in str(ignore_reason(PurePath("song.demo.mp3"), DEFAULT_EXTENSIONS, extra))
    assert ignore_reason(PurePath("drafts/song.mp3"), DEFAULT_EXTENSIONS, extra) is not None
    assert ignore_reason(PurePath("live/set.wav"), DEFAULT_EXTENSIONS, extra) is not None
    assert ignore_reason(PurePath("live/set.mp3"), DEFAULT_EXTENSIONS, extra) is None
    assert dir_ignored(PurePath("a/drafts"), extra)
    assert not dir_ignored(PurePath("a/final"), extra)


def test_the_reason_names_what_matched() -> None:
    reason = ignore_reason(PurePath("@eaDir/song.mp3"), DEFAULT_EXTENSIONS)
    assert reason == "folder '@eaDir' matches ignore pattern '@eaDir'"
    assert "watch.extensions" in str(ignore_reason(PurePath("a.txt"), DEFAULT_EXTENSIONS))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, data: bytes, mtime: int) -> None:
    with open(path, "ab") as file:
        file.write(data)
    os.utime(path, ns=(mtime, mtime))


def test_a_closed_file_settles_after_the_quiet_period(tmp_path: Path) -> None:
    clock = Clock()
    settler = Settler(2.0, require_close=True, clock=clock)
    path = tmp_path / "a.wav"
    write(path, b"x" * 10, 1)
    settler.closed(path)
    assert settler.poll() == []  # first look records size and mtime
    clock.now += 1.9
    assert settler.poll() == []
    clock.now += 0.2
    assert settler.poll() == [path]
    assert path not in settler


def test_a_growing_file_does_not_settle(tmp_path: Path) -> None:
    clock = Clock()
    settler = Settler(2.0, require_close=False, clock=clock)
    path = tmp_path / "a.wav"
    write(path, b"x", 1)
    settler.found(path)
    settler.poll()
    for step in range(2, 8):
        clock.now += 1.5
        write(path, b"x", step)
        assert settler.poll() == [], f"settled while still growing (step {step})"
    clock.now += 2.1
    assert settler.poll() == [path]


def tracking(tmp_path: Path, how: str, data: bytes = b"x") -> tuple[Settler, Clock, Path]:
    """An inotify settler (2 s quiet, 60 s stall) that has seen a file by `how`
    (written / created) and taken its first look at it."""
    clock = Clock()
    settler = Settler(2.0, require_close=True, clock=clock, stall_timeout=60)
    path = tmp_path / "a.wav"
    write(path, data, 1)
    getattr(settler, how)(path)
    settler.poll()
    return settler, clock, path


def test_with_inotify_an_unclosed_file_waits_for_its_close(tmp_path: Path) -> None:
    settler, clock, path = tracking(tmp_path, "written")
    clock.now += 10
    assert settler.poll() == [], "settled although the writer never closed it"
    settler.closed(path)
    assert settler.poll() == [path]


def test_a_writer_that_never_closes_is_taken_after_the_stall_timeout(tmp_path: Path) -> None:
    settler, clock, path = tracking(tmp_path, "written")
    clock.now += 59
    assert settler.poll() == []
    clock.now += 2
    assert settler.poll() == [path]


def test_a_scan_does_not_override_a_known_writer(tmp_path: Path) -> None:
    settler, clock, path = tracking(tmp_path, "written")
    settler.found(path)  # a rescan sees the same file
    settler.poll()
    clock.now += 5
    assert settler.poll() == []


def test_a_file_moved_in_settles_by_the_quiet_period(tmp_path: Path) -> None:
    settler, clock, path = tracking(tmp_path, "created")  # inotify: appeared, no writer seen
    clock.now += 2.1
    assert settler.poll() == [path]


def test_a_created_file_that_then_gets_written_waits_for_the_close(tmp_path: Path) -> None:
    settler, clock, path = tracking(tmp_path, "created", data=b"")
    clock.now += 3
    assert settler.poll() == [], "an empty file nobody closed is not complete"
    write(path, b"x", 2)
    settler.written(path)
    clock.now += 3
    settler.poll()
    clock.now += 3
    assert settler.poll() == []
    settler.closed(path)
    assert settler.poll() == [path]


def test_vanished_files_are_forgotten(tmp_path: Path) -> None:
    settler = Settler(0.0, require_close=False, clock=Clock())
    path = tmp_path / "a.wav"
    write(path, b"x", 1)
    settler.found(path)
    path.unlink()
    assert settler.poll() == [] and len(settler) == 0


def test_forget_under_a_removed_folder(tmp_path: Path) -> None:
    settler = Settler(1.0, require_close=False, clock=Clock())
    settler.found(tmp_path / "album" / "a.wav")
    settler.found(tmp_path / "other.wav")
    settler.forget_under(tmp_path / "album")
    assert len(settler) == 1
