"""A full outbox (a real 8 MB tmpfs): no partial output, the job waits, and it
succeeds by itself once space is freed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from support.audio import make_tone
from support.daemon import Daemon
from support.instrumented_model import gated_daemon, record_in
from support.mounts import needs_root, tmpfs
from support.outbox_watch import TEMP_DIR, OutboxWatch
from support.waiting import wait_until

SECONDS = {"mid": 2.0, "late": 1.5}  # four 16-bit stereo stems: 1.4 MB and 1.1 MB


def fill(outbox: Path, leave: int) -> Path:
    """A file that leaves `leave` bytes free in the outbox."""
    filler = outbox / "someone-elses-backup.bin"
    free = shutil.disk_usage(outbox).free
    with open(filler, "wb") as out:
        out.truncate(0)
        chunk = b"\0" * (1 << 20)
        remaining = free - leave
        while remaining > 0:
            remaining -= out.write(chunk[: min(len(chunk), remaining)])
        out.flush()
        os.fsync(out.fileno())
    return filler


def track_folders(outbox: Path) -> list[str]:
    return sorted(p.parent.name for p in outbox.glob("gated/*/stemd.json"))


def counts(daemon: Daemon) -> dict[str, int]:
    """The status report's counts (read in-process: it is polled)."""
    result: dict[str, int] = daemon.report()["counts"]
    return result


def queued_attempts(daemon: Daemon) -> list[int]:
    return [job["attempts"] for job in daemon.status()["queued"]]


@needs_root
def test_a_full_outbox_leaves_nothing_partial_and_the_job_finishes_when_space_is_freed(
    tmp_path: Path,
) -> None:
    daemon, _config, gate = gated_daemon(tmp_path)
    record = record_in(tmp_path)
    with tmpfs(tmp_path / "outbox", size="8m") as outbox:
        daemon.start()
        try:
            daemon.wait_ready()
            with OutboxWatch(outbox, SECONDS) as watch:
                # 1. The disk fills up while a track is being separated.
                shutil.copyfile(
                    make_tone(tmp_path / "staging" / "mid.wav", SECONDS["mid"]),
                    tmp_path / "inbox" / "mid.wav",
                )
                wait_until((gate / "entered").exists, 60, "mid.wav to reach the model")
                filler = fill(outbox, leave=400_000)
                (gate / "open").touch()
                wait_until(
                    lambda: "mid.wav: the outbox is full" in daemon.log(), 60, "the write to fail"
                )
                assert "No space left on device" in daemon.log()
                assert counts(daemon) == {"queued": 1, "running": 0, "done": 0, "failed": 0}
                assert queued_attempts(daemon) == [0], "a full outbox used up an attempt"
                assert track_folders(outbox) == [] and not (outbox / TEMP_DIR).exists()
                filler.unlink()
                wait_until(lambda: counts(daemon)["done"] == 1, 60, "mid.wav after freeing space")

                # 2. Already full when a track arrives: refused before the separation.
                filler = fill(outbox, leave=1_000_000)
                shutil.copyfile(
                    make_tone(tmp_path / "staging" / "late.wav", SECONDS["late"], frequency=660),
                    tmp_path / "inbox" / "late.wav",
                )
                wait_until(
                    lambda: f"late.wav: the outbox {outbox} is full" in daemon.log(),
                    60,
                    "the space check",
                )
                assert "MB needed for late.wav; free some space (the job waits)" in daemon.log()
                assert counts(daemon) == {"queued": 1, "running": 0, "done": 1, "failed": 0}
                assert queued_attempts(daemon) == [0], "a full outbox used up an attempt"
                # the model never saw late.wav while the outbox was full
                assert record.count(SECONDS["late"]) == 0
                filler.unlink()
                wait_until(lambda: counts(daemon)["done"] == 2, 60, "late.wav after freeing space")
                assert record.count(SECONDS["late"]) == 1
            assert watch.problems == []
            assert track_folders(outbox) == ["late", "mid"]
            for name in ("mid", "late"):
                manifest = json.loads((outbox / "gated" / name / "stemd.json").read_text())
                assert sorted(manifest["stems"]) == ["bass", "drums", "other", "vocals"]
            assert not (outbox / TEMP_DIR).exists()
            assert daemon.stop() == 0
        finally:
            (gate / "open").touch()
            daemon.kill()
