"""The daemon as a user meets it: `stemd run` in a subprocess, files dropped into the
inbox, stems read back from the outbox, `stemd status --json`, SIGTERM, restart."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.audio import make_tone, probe, read_audio
from support.daemon import TEST_MODEL, Daemon, stemd, write_config
from support.http import listening_ports
from support.instrumented_model import (
    GATE_AFTER_ENV,
    GATED,
    RECORDER,
    instrumented_model,
    model_env,
)
from support.published import published
from support.waiting import wait_until

MODEL = RECORDER  # demucs_unittest's architecture, recording what it separates
STEMS = {"drums", "bass", "other", "vocals"}


def daemon_config(root: Path, **extra: Any) -> Path:
    config: dict[str, Any] = {
        "inbox": "inbox",
        "outbox": "outbox",
        "state_dir": "state",
        "watch": {"settle": "1s"},
        "model": dict(TEST_MODEL),
        "logging": {"target": "stderr"},
        "service": {"shutdown_grace": "30s"},
        "http": {"listen": None},  # tests/e2e/test_http.py serves; these need no port
    }
    config.update(extra)
    (root / "inbox").mkdir(exist_ok=True)
    return write_config(root / "stemd.yaml", config)


def track_dir(root: Path, relative: str) -> Path:
    return root / "outbox" / MODEL / relative


def published_at(root: Path, relative: str) -> bool:
    return published(track_dir(root, relative))


def assert_stems(folder: Path, source: Path) -> dict[str, Any]:
    """Four complete stems at the model's rate and the input's duration."""
    manifest: dict[str, Any] = json.loads((folder / "stemd.json").read_text())
    assert set(manifest["stems"]) == STEMS
    expected = float(probe(source)["duration"])
    for stem, name in manifest["stems"].items():
        data, rate = read_audio(folder / name)
        assert rate == 44100, f"{folder.name}/{stem}: {rate} Hz"
        assert data.shape[0] == 2
        # mp3 decoders add or drop up to a frame of padding: allow 60 ms
        assert abs(data.shape[1] / rate - expected) < 0.06, (folder.name, stem, expected)
    return manifest


@pytest.mark.slow
def test_dropped_files_become_stems_exactly_once(tmp_path: Path, instrumented_repo: Path) -> None:
    staging = tmp_path / "staging"
    inbox = tmp_path / "inbox"
    config = daemon_config(tmp_path, model=instrumented_model(instrumented_repo))
    env, record = model_env(tmp_path)
    sources = {
        "song.mp3": make_tone(staging / "song.mp3", 3.0, frequency=440),
        "album/track.flac": make_tone(staging / "track.flac", 2.5, frequency=330),
        "hi.wav": make_tone(staging / "hi.wav", 2.0, codec_args=("-c:a", "pcm_s24le")),
        "mono48k.wav": make_tone(staging / "mono48k.wav", 2.0, rate=48000, channels=1),
    }
    pieces_src = make_tone(staging / "pieces.wav", 4.0, frequency=550)
    corrupt = staging / "corrupt.mp3"
    corrupt.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + os.urandom(40_000))
    text = staging / "notes.mp3"
    text.write_text("these are my lyrics, not audio\n" * 50)

    daemon = Daemon(config, tmp_path, env=env).start()
    try:
        daemon.wait_ready()
        for relative, src in sources.items():
            dest = inbox / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        # `mv` into the inbox: a rename, no write and no close event
        moved = make_tone(staging / "moved.ogg", 2.0, frequency=880)
        os.rename(moved, inbox / "moved.ogg")
        shutil.copyfile(sources["song.mp3"], inbox / "song copy.mp3")
        shutil.copyfile(corrupt, inbox / "corrupt.mp3")
        shutil.copyfile(text, inbox / "notes.mp3")

        # A slow writer: four pieces, a second apart, through one open file.
        data = pieces_src.read_bytes()
        with open(inbox / "pieces.wav", "wb") as out:
            for i in range(4):
                out.write(data[i * len(data) // 4 : (i + 1) * len(data) // 4])
                out.flush()
                time.sleep(1.0)  # the writer's pace, not a synchronisation

        def all_settled() -> bool:
            counts = daemon.report()["counts"]
            return counts["done"] == 6 and counts["failed"] == 2 and counts["queued"] == 0

        wait_until(all_settled, 120, "6 done and 2 failed jobs")
        wait_until(lambda: published_at(tmp_path, "song copy"), 30, "the copy to be published")
        assert (track_dir(tmp_path, "moved") / "stemd.json").is_file()

        log = daemon.log()
        # the model's slow first pass was taken at start-up, not in a track's time
        assert log.index("warmed up in") < log.index(": separating")
        for relative, src in sources.items():
            manifest = assert_stems(track_dir(tmp_path, relative.rsplit(".", 1)[0]), src)
            # the model's share of the separation's time, measured inside stemd
            assert 0 < manifest["model_seconds"] <= manifest["separation_seconds"], manifest

        # The copy reuses the song's stems: hard links, no second separation.
        copy_manifest = assert_stems(track_dir(tmp_path, "song copy"), sources["song.mp3"])
        assert copy_manifest["duplicate_of"] == f"{MODEL}/song"
        assert copy_manifest["separation_seconds"] == copy_manifest["model_seconds"] == 0
        for name in copy_manifest["stems"].values():
            original = track_dir(tmp_path, "song") / name
            assert (track_dir(tmp_path, "song copy") / name).stat().st_ino == original.stat().st_ino
        # and the waveforms the page draws go with them
        assert copy_manifest["peaks"] == "peaks.json"
        copied_peaks = track_dir(tmp_path, "song copy") / "peaks.json"
        assert (
            copied_peaks.stat().st_ino == (track_dir(tmp_path, "song") / "peaks.json").stat().st_ino
        )
        assert set(json.loads(copied_peaks.read_text())["stems"]) == set(copy_manifest["stems"])
        # The model's own record: the only 3 s track (song.mp3 and its copy) and the
        # only 4 s one (pieces.wav) were each separated once.
        assert record.count(3.0, tolerance=0.1) == 1

        # The slow file was separated once, whole, after it stopped growing.
        assert record.count(4.0) == 1
        assert_stems(track_dir(tmp_path, "pieces"), pieces_src)
        assert not track_dir(tmp_path, "pieces (2)").exists()

        # Both bad inputs failed with a reason; the daemon is still serving.
        failed = {item["source"]: item for item in daemon.status()["failed"]}
        assert set(failed) == {"corrupt.mp3", "notes.mp3"}
        for item in failed.values():
            assert item["error"] and item["sha256"] and item["attempts"] == 1
        assert not track_dir(tmp_path, "corrupt").exists()
        assert daemon.process is not None and daemon.process.poll() is None
        shutil.copyfile(make_tone(staging / "after.flac", 1.5, frequency=660), inbox / "after.flac")
        wait_until(lambda: published_at(tmp_path, "after"), 60, "a file dropped after the failures")

        assert daemon.stop() == 0
        assert "stemd stopped" in daemon.log()

        # Dropped while stopped: processed after a restart, and nothing is redone.
        shutil.copyfile(make_tone(staging / "late.mp3", 1.75, frequency=770), inbox / "late.mp3")
        daemon.start()
        daemon.wait_ready()
        wait_until(lambda: published_at(tmp_path, "late"), 60, "the file dropped while stopped")
        # after the restart, late.mp3 alone was separated: nothing done before again
        assert daemon.process is not None
        restarted = [p for p in record.passes() if p["pid"] == daemon.process.pid]
        assert len(restarted) == 1 and abs(restarted[0]["seconds"] - 1.75) < 0.1, restarted
        folders = sorted(p.name for p in (tmp_path / "outbox" / MODEL).iterdir())
        assert folders == [
            "after",
            "album",
            "hi",
            "late",
            "mono48k",
            "moved",
            "pieces",
            "song",
            "song copy",
        ]
        # empty: tidied away, just after the rename that made `late` visible
        wait_until(
            lambda: not (tmp_path / "outbox" / ".stemd-tmp").exists(), 10, "the temp root tidied"
        )
        assert daemon.status()["counts"] == {"queued": 0, "running": 0, "done": 8, "failed": 2}
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_sigint_stops_cleanly_and_listen_null_opens_no_port(tmp_path: Path) -> None:
    config = daemon_config(tmp_path)  # http.listen: null
    daemon = Daemon(config, tmp_path).start()
    try:
        daemon.wait_ready()
        assert listening_ports(daemon.pid) == []
        assert "http: off" in daemon.log()
        daemon.signal(signal.SIGINT)
        assert daemon.process is not None
        assert daemon.process.wait(30) == 0
        assert "received SIGINT; stopping" in daemon.log()
    finally:
        daemon.kill()


def test_invalid_config_exits_78_naming_every_key(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "bad.yaml",
        {
            "inbox": "in",
            "outbox": "in/out",
            "watch": {"settle": "soon", "extensions": []},
            "model": {"device": "tpu"},
            "source": {"after_success": "move"},
            "colour": "blue",
        },
    )
    for command in ("check", "run"):
        result = stemd("-c", str(config), command, cwd=tmp_path)
        assert result.returncode == 78, result.stderr
        for key in (
            "bad.yaml: watch.settle",
            "bad.yaml: watch.extensions",
            "bad.yaml: model.device",
            "bad.yaml: colour",
            "bad.yaml: outbox",
            "bad.yaml: source.archive_dir",
        ):
            assert key in result.stderr, (command, key, result.stderr)
    assert not (tmp_path / "in").exists(), "a rejected config must not create folders"


def test_missing_weights_exit_69_and_say_how_to_provide_them(tmp_path: Path) -> None:
    config = daemon_config(tmp_path, model={"name": "htdemucs", "device": "cpu"})
    offline = {  # no internet, empty caches
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
    }
    result = stemd("-c", str(config), "run", cwd=tmp_path, env=offline)
    assert result.returncode == 69, result.stderr
    assert "htdemucs" in result.stderr
    assert "stemd models fetch htdemucs" in result.stderr
    assert "model.repo" in result.stderr


def test_sighup_applies_a_valid_config_and_keeps_the_old_one_when_invalid(
    tmp_path: Path, instrumented_repo: Path
) -> None:
    config = daemon_config(tmp_path, model=instrumented_model(instrumented_repo))
    inbox = tmp_path / "inbox"
    daemon = Daemon(config, tmp_path, env=model_env(tmp_path)[0]).start()
    try:
        daemon.wait_ready()
        shutil.copyfile(make_tone(tmp_path / "one.wav", 1.0), inbox / "one.wav")
        wait_until(lambda: published_at(tmp_path, "one"), 60, "one.wav")
        assert (track_dir(tmp_path, "one") / "vocals.wav").exists()

        settings = yaml.safe_load(config.read_text())
        settings["output"] = {"format": "flac"}
        write_config(config, settings)
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: "configuration applied" in daemon.log(), 30, "the reload")
        # the log says what the reload changed, and only that
        changed = [line for line in daemon.log().splitlines() if "stemd: INFO: changed: " in line]
        assert changed == ["stemd: INFO: changed: output.format: 'wav' -> 'flac'"]
        shutil.copyfile(make_tone(tmp_path / "two.wav", 1.0, frequency=300), inbox / "two.wav")
        wait_until(lambda: published_at(tmp_path, "two"), 60, "two.wav")
        assert (track_dir(tmp_path, "two") / "vocals.flac").exists()

        config.write_text(config.read_text() + "bogus_key: 1\n")
        daemon.signal(signal.SIGHUP)
        wait_until(
            lambda: "reload rejected: stemd.yaml: bogus_key" in daemon.log(),
            30,
            "the invalid reload to be rejected",
        )
        shutil.copyfile(make_tone(tmp_path / "three.wav", 1.0, frequency=500), inbox / "three.wav")
        wait_until(lambda: published_at(tmp_path, "three"), 60, "three.wav under the old config")
        assert (track_dir(tmp_path, "three") / "vocals.flac").exists()
        assert daemon.stop() == 0
    finally:
        daemon.kill()


# A 2 s track fits the gated model's one chunk (4 s, advancing 3 s): one pass a
# shift, so 4 passes a separation and progress 1/4 after the first.
SHIFTS = 4


@pytest.mark.slow
def test_sigterm_mid_separation_requeues_the_job_and_a_restart_finishes_it_once(
    tmp_path: Path, instrumented_repo: Path
) -> None:
    config = daemon_config(
        tmp_path,
        model={**instrumented_model(instrumented_repo, GATED), "shifts": SHIFTS},
        service={"shutdown_grace": "0s"},
    )
    env, record = model_env(tmp_path, gate=True)
    gate = tmp_path / "gate"
    # The first pass goes through; the model holds the second until the gate opens.
    daemon = Daemon(config, tmp_path, env={**env, GATE_AFTER_ENV: "1"}).start()
    try:
        daemon.wait_ready()
        shutil.copyfile(make_tone(tmp_path / "s" / "song.wav", 2.0), tmp_path / "inbox/song.wav")
        wait_until((gate / "entered").exists, 60, "the second pass to be held")
        [running] = daemon.status()["running"]
        assert running["source"] == "song.wav" and 0 < running["progress"] < 0.5, running

        daemon.signal(signal.SIGTERM)
        wait_until(
            lambda: "song.wav: cancelling at the next chunk" in daemon.log(), 30, "the cancel"
        )
        (gate / "open").touch()  # the held pass ends; the job is cancelled before the next
        assert daemon.stop() == 0
        assert "song.wav: interrupted; requeued" in daemon.log()
        status = daemon.status()
        assert status["counts"]["queued"] == 1
        assert [job["attempts"] for job in status["queued"]] == [0], "SIGTERM used an attempt"
        assert not (tmp_path / "outbox" / GATED).exists()
        first_run = len(record.passes())
        assert first_run == 2

        daemon.start()
        daemon.wait_ready()
        folder = tmp_path / "outbox" / GATED / "song"
        wait_until(lambda: (folder / "stemd.json").is_file(), 120, "the requeued job")
        # one whole separation after the restart: one pass per shift
        assert len(record.passes()) - first_run == SHIFTS
        assert daemon.status()["counts"] == {"queued": 0, "running": 0, "done": 1, "failed": 0}
        data, rate = read_audio(folder / "vocals.wav")
        assert abs(data.shape[1] / rate - 2.0) < 0.05
        assert daemon.stop() == 0
    finally:
        (gate / "open").touch()
        daemon.kill()
