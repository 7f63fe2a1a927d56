"""A shared inbox gets everything: broken files, odd names, links, FIFOs.

All of it is dropped at once beside good files into a running daemon. Each case
must end as expected (done, failed with a reason, or ignored with a logged
reason naming the file), the good files must still be served, and nothing
outside the inbox may be read.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.audio import make_tone
from support.daemon import Daemon, service_config
from support.published import published_manifests
from support.waiting import wait_until

LONG_NAME = "a" * 251 + ".wav"  # 255 bytes, the most a name can have


@dataclass(frozen=True)
class Case:
    name: str  # inbox-relative
    outcome: str  # done | failed | ignored
    reason: str = ""  # a piece of the logged reason (failed, ignored)


def build_inbox(staging: Path, inbox: Path, outside: Path) -> list[Case]:
    """Make every hostile case in `staging`/`outside`, then move it into the inbox."""
    cases: list[Case] = []
    pitch = iter(range(200, 2000, 37))  # every good file distinct content

    def tone(name: str, seconds: float = 1.0, **kwargs: Any) -> Path:
        return make_tone(staging / name, seconds, frequency=next(pitch), **kwargs)

    def put(source: Path, name: str, outcome: str, reason: str = "") -> None:
        target = inbox / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source, target)
        cases.append(Case(name, outcome, reason))

    # Broken content: fails with a reason.
    (staging / "empty.wav").write_bytes(b"")
    put(staging / "empty.wav", "empty.wav", "failed", "empty")
    (staging / "random.wav").write_bytes(os.urandom(200_000))
    put(staging / "random.wav", "random.wav", "failed", "random.wav")
    (staging / "lyrics.mp3").write_text("not audio, just words\n" * 100)
    put(staging / "lyrics.mp3", "lyrics.mp3", "failed", "lyrics.mp3")
    for ext in ("mp3", "flac"):
        whole = tone(f"whole.{ext}", 4.0).read_bytes()
        (staging / f"cut.{ext}").write_bytes(whole[: len(whole) // 2])
    # A truncated mp3 has no length in its header: what is there is used.
    put(staging / "cut.mp3", "truncated.mp3", "done")
    put(staging / "cut.flac", "truncated.flac", "failed", "truncated")
    # Garbage after the first frames: decodes, with errors, to a fraction of itself.
    for ext, keep in (("mp3", 3000), ("flac", 20000)):
        whole = tone(f"ten.{ext}", 10.0).read_bytes()
        damaged = whole[:keep] + random.Random(keep).randbytes(len(whole) - keep)
        (staging / f"corrupt.{ext}").write_bytes(damaged)
        put(staging / f"corrupt.{ext}", f"corrupt.{ext}", "failed", "corrupt: it decodes to")
    # One bad frame in a longer file: separated, with a warning.
    frames = bytearray(tone("bad-frame.mp3", 14.0).read_bytes())
    frames[len(frames) // 2 : len(frames) // 2 + 600] = random.Random(1).randbytes(600)
    (staging / "bad-frame.mp3").write_bytes(bytes(frames))
    put(staging / "bad-frame.mp3", "one bad frame.mp3", "done")
    put(tone("big.wav", 20.0), "big.wav", "failed", "watch.max_file_size")
    put(tone("long.wav", 16.0, rate=8000, channels=1), "long.wav", "failed", "watch.max_duration")

    # Odd but real audio: separated.
    put(tone("mp3-inside.mp3"), "mp3 named.wav", "done")
    put(tone("blip.wav", 0.05), "blip.wav", "done")
    put(tone("eight.wav", channels=8), "eight channels.wav", "done")
    put(tone("mono.wav", channels=1), "mono.wav", "done")
    put(tone("8k.wav", rate=8000), "8k.wav", "done")
    put(tone("96k.wav", rate=96000), "96k.wav", "done")
    put(tone("f32.wav", codec_args=("-c:a", "pcm_f32le")), "float.wav", "done")
    video = staging / "video.mp4"
    make_video(tone("soundtrack.wav"), video)
    put(video, "video.mp4", "done")
    for name in ("with space.wav", "ünïcödé.wav", "emoji 🎵.wav", "new\nline.wav", "-i.wav"):
        put(tone("odd-name.wav"), name, "done")
    put(tone("long-name.wav"), LONG_NAME, "done")
    locked = tone("locked.wav")
    locked.chmod(0o000)
    # root reads a mode-000 file anyway; anyone else cannot
    put(locked, "locked.wav", "done" if os.geteuid() == 0 else "failed", "locked.wav")
    outside_file = tone("outside.wav")
    shutil.move(outside_file, outside / "outside.wav")
    os.link(outside / "outside.wav", staging / "hardlink.wav")
    put(staging / "hardlink.wav", "hardlink.wav", "done")  # a hard link is in the inbox

    # Not regular files: ignored, with the reason logged.
    os.mkfifo(staging / "x.wav")
    put(staging / "x.wav", "x.wav", "ignored", "not a regular file")
    os.mkfifo(outside / "secret.fifo")
    os.symlink(outside / "secret.fifo", staging / "outside.wav")
    put(staging / "outside.wav", "outside.wav", "ignored", "a symlink")
    os.symlink("loop-b.wav", staging / "loop-a.wav")
    os.symlink("loop-a.wav", staging / "loop-b.wav")
    put(staging / "loop-a.wav", "loop-a.wav", "ignored", "a symlink")
    put(staging / "loop-b.wav", "loop-b.wav", "ignored", "a symlink")
    (staging / "folder.mp3").mkdir()
    put(tone("inside.wav"), "folder.mp3/inside.wav", "done")  # a folder is a folder
    return cases


def make_video(audio: Path, video: Path) -> None:
    import subprocess

    subprocess.run(
        [
            *("ffmpeg", "-nostdin", "-v", "error", "-y"),
            *("-f", "lavfi", "-i", "testsrc=size=64x64:rate=10:duration=1"),
            *("-i", str(audio), "-shortest", "-c:v", "mpeg4", "-c:a", "aac", str(video)),
        ],
        check=True,
        timeout=60,
    )


def fifo_has_reader(fifo: Path) -> bool:
    """Opening a FIFO to write without blocking fails with ENXIO when no one reads."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.ENXIO:
            return False
        raise
    os.close(fd)
    return True


def outcomes(root: Path, daemon: Daemon) -> dict[str, tuple[str, str]]:
    """source -> (done | failed, reason) from the outbox manifests and the status
    report (read in-process: this is polled)."""
    found: dict[str, tuple[str, str]] = {}
    for manifest in published_manifests(root / "outbox"):  # (racing the daemon's work)
        found[manifest["source"]] = ("done", "")
    for failure in daemon.report()["failed"]:
        found[failure["source"]] = ("failed", failure["error"])
    return found


@pytest.mark.slow
def test_hostile_inputs_end_as_expected_and_good_files_are_still_served(tmp_path: Path) -> None:
    inbox, outside, staging = tmp_path / "inbox", tmp_path / "outside", tmp_path / "staging"
    for folder in (outside, staging):
        folder.mkdir()
    config = service_config(
        tmp_path,
        watch={"settle": "0.5s", "max_file_size": "3MiB", "max_duration": "15s"},
        source={"max_attempts": 1},
    )
    daemon = Daemon(config, tmp_path).start()
    try:
        daemon.wait_ready()
        cases = build_inbox(staging, inbox, outside)
        assert len(cases) >= 25
        settled = [c for c in cases if c.outcome != "ignored"]

        def all_settled() -> bool:
            return len(outcomes(tmp_path, daemon)) >= len(settled)

        wait_until(all_settled, 240, "every case to end")
        wait_until(
            lambda: all(
                f"{c.name}: ignored" in daemon.log() for c in cases if c.outcome == "ignored"
            ),
            30,
            "the ignored cases to be logged",
        )
        # still serving: a good file dropped after all of that
        shutil.copyfile(make_tone(staging / "after.wav", 1.0, frequency=2500), inbox / "after.wav")
        wait_until(lambda: "after.wav" in outcomes(tmp_path, daemon), 60, "after.wav")
        assert not fifo_has_reader(outside / "secret.fifo")
        assert daemon.status()["failed"] == daemon.report()["failed"]  # the command agrees
        assert daemon.stop() == 0
    finally:
        daemon.kill()

    log = daemon.log()
    ended = outcomes(tmp_path, daemon)
    wrong = []
    for case in cases:
        if case.outcome == "ignored":
            if not any(case.name in line and case.reason in line for line in log.splitlines()):
                wrong.append(f"{case.name!r}: no 'ignored, {case.reason}' line")
            if case.name in ended:
                wrong.append(f"{case.name!r}: should be ignored, ended {ended[case.name]}")
            continue
        state, reason = ended.get(case.name, ("missing", ""))
        if state != case.outcome:
            wrong.append(f"{case.name!r}: expected {case.outcome}, got {state} {reason}")
        elif state == "failed":
            if case.reason not in reason and case.reason not in case.name:
                wrong.append(f"{case.name!r}: reason {reason!r} lacks {case.reason!r}")
            if not any(
                case.name.split("\n")[0] in line and "ERROR" in line for line in log.splitlines()
            ):
                wrong.append(f"{case.name!r}: no error line naming it")
    assert wrong == [], "\n".join(wrong) + "\n" + log
    assert ended["after.wav"] == ("done", "")
    assert "Traceback" not in log
    assert any(
        "one bad frame.mp3" in line and "decoder error" in line and "separated anyway" in line
        for line in log.splitlines()
    ), "no warning about the bad frame"
