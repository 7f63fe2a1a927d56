"""Work files (state_dir/work): there while a track is in hand, gone whatever
way it ends: published, failed, stopped, killed, or out of room."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import yaml

from support.audio import make_tone
from support.daemon import Daemon, write_config
from support.instrumented_model import gated_daemon, record_in
from support.mounts import needs_root, tmpfs
from support.published import manifests_under
from support.waiting import wait_until

SECONDS = 3.0


def work_folders(root: Path) -> list[Path]:
    work = root / "state" / "work"
    return sorted(work.iterdir()) if work.is_dir() else []


def drop(root: Path, name: str, seconds: float = SECONDS) -> None:
    shutil.copyfile(make_tone(root / "staging" / name, seconds), root / "inbox" / name)


def published(root: Path) -> dict[str, str]:
    return {t: m["source"] for t, m in manifests_under(root / "outbox" / "gated").items()}


def test_sigkill_mid_separation_leaves_work_files_that_the_restart_removes(
    tmp_path: Path,
) -> None:
    daemon, config, gate = gated_daemon(tmp_path)
    record = record_in(tmp_path)
    daemon.start()
    try:
        daemon.wait_ready()
        drop(tmp_path, "song.wav")
        wait_until((gate / "entered").exists, 60, "song.wav in the model")
        [folder] = work_folders(tmp_path)  # the job's own folder, with its decoded mix
        mix = folder / "mix.f32"
        assert mix.stat().st_size == int(SECONDS * 44100) * 2 * 4
    finally:
        daemon.kill()  # no clean-up code runs
    assert folder.exists()
    (gate / "open").touch()
    again = Daemon(config, tmp_path, env=daemon.env).start()
    try:
        wait_until(lambda: published(tmp_path) == {"song": "song.wav"}, 60, "song.wav redone")
        assert "work files left by an earlier run" in again.log()
        assert not folder.exists()
        wait_until(lambda: work_folders(tmp_path) == [], 10, "the redone job's folder to go")
    finally:
        again.stop()
    # the model saw the track's first chunk twice: once killed, once to the end
    assert record.count(SECONDS) == 2
    assert published(tmp_path) == {"song": "song.wav"}  # published once, no "song (2)"


def test_sigterm_and_failures_leave_no_work_files(tmp_path: Path) -> None:
    daemon, _config, gate = gated_daemon(tmp_path, shutdown_grace="0s")
    daemon.start()
    try:
        daemon.wait_ready()
        (tmp_path / "inbox" / "fake.wav").write_bytes(b"RIFF not really a wave file" * 100)
        wait_until(lambda: daemon.report()["counts"]["failed"] == 1, 60, "fake.wav to fail")
        assert work_folders(tmp_path) == []
        drop(tmp_path, "song.wav")
        wait_until((gate / "entered").exists, 60, "song.wav in the model")
        assert len(work_folders(tmp_path)) == 1
        daemon.signal(signal.SIGTERM)
        wait_until(lambda: "cancelling at the next chunk" in daemon.log(), 30, "the cancel")
        (gate / "open").touch()  # the held pass ends; the job is cancelled before the next
        assert daemon.stop() == 0
        assert "song.wav: interrupted; requeued" in daemon.log()
    finally:
        (gate / "open").touch()
        daemon.kill()
    assert work_folders(tmp_path) == []  # the cancelled job's work folder is gone


@needs_root
def test_a_work_area_that_fills_up_mid_separation_requeues_without_an_attempt(
    tmp_path: Path,
) -> None:
    daemon, config, gate = gated_daemon(tmp_path)
    settings = yaml.safe_load(config.read_text())
    settings["source"] = {"retry_delay": "1s"}
    write_config(config, settings)
    with tmpfs(tmp_path / "state" / "work", size="32m") as work:
        daemon.start()
        try:
            daemon.wait_ready()
            drop(tmp_path, "song.wav")  # a 1 MB mix, 4 MB of stems: room for both
            wait_until((gate / "entered").exists, 60, "song.wav in the model")
            filler = work / "someone-elses-file.bin"
            free = shutil.disk_usage(work).free
            filler.write_bytes(b"\0" * (free - 500_000))  # room for a little, not the stems
            (gate / "open").touch()
            wait_until(
                lambda: "song.wav: the work area" in daemon.log(), 60, "the stems' write to fail"
            )
            assert "filled up while writing" in daemon.log()
            [queued] = daemon.status()["queued"]
            assert queued["attempts"] == 0, "a full work area used up an attempt"
            assert [p.name for p in work.iterdir()] == [filler.name]  # nothing of the job left
            filler.unlink()
            wait_until(lambda: published(tmp_path) == {"song": "song.wav"}, 60, "the retry")
            wait_until(lambda: list(work.iterdir()) == [], 10, "the job's folder to go")
        finally:
            daemon.stop()
