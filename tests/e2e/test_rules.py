"""Choices per folder: `rules:` decide each job's stems and format, and the same
content asked for several ways is separated once and rendered each way."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np

from support.audio import make_mix, read_audio
from support.daemon import Daemon, service_config
from support.instrumented_model import (
    RECORDER,
    build_instrumented_repo,
    gated_daemon,
    instrumented_model,
    model_env,
)
from support.waiting import wait_until

RULES = [
    {"match": "karaoke/**", "two_stems": "vocals", "format": "mp3"},
    {"match": "practice/**", "format": "flac"},
    # float32 WAV of both splits: no_vocals can be checked against the others' sum
    {"match": "float-four/**", "format": "wav", "sample_format": "f32"},
    {"match": "float-two/**", "format": "wav", "sample_format": "f32", "two_stems": "vocals"},
]
FOUR = {"drums", "bass", "other", "vocals"}


def test_one_song_in_four_folders_is_separated_once_and_rendered_four_ways(
    tmp_path: Path,
) -> None:
    repo = build_instrumented_repo(tmp_path / "models")
    env, record = model_env(tmp_path)
    config = service_config(
        tmp_path, model={**instrumented_model(repo, RECORDER), "shifts": 1}, rules=RULES
    )
    drop = tmp_path / "drop"
    song = make_mix(tmp_path / "song.flac", seconds=3.0)
    for folder in ("karaoke", "practice", "float-four", "float-two"):
        (drop / folder).mkdir(parents=True)
        (drop / folder / "song.flac").write_bytes(song.read_bytes())
    daemon = Daemon(config, tmp_path, env=env).start()
    try:
        daemon.wait_warm()
        for folder in sorted(drop.iterdir()):  # one after the other, as people drop them
            folder.rename(tmp_path / "inbox" / folder.name)
        wait_until(lambda: daemon.report()["counts"]["done"] == 4, 120, "four jobs done")
        work = tmp_path / "state" / "work"  # the kept separation, let go once idle
        wait_until(lambda: not any(work.iterdir()), 30, "the work area emptied")
        assert daemon.stop() == 0
    finally:
        daemon.kill()

    # the model's own record: one pass over the 3 s track, for four jobs
    assert record.count(3.0, tolerance=0.1) == 1, record.passes()
    out = tmp_path / "outbox" / RECORDER
    files = {
        folder: {p.name for p in (out / folder / "song").iterdir() if p.suffix != ".json"}
        for folder in ("karaoke", "practice", "float-four", "float-two")
    }
    assert files["karaoke"] == {"vocals.mp3", "no_vocals.mp3"}
    assert files["practice"] == {f"{stem}.flac" for stem in FOUR}
    assert files["float-four"] == {f"{stem}.wav" for stem in FOUR}
    assert files["float-two"] == {"vocals.wav", "no_vocals.wav"}
    manifest = json.loads((out / "karaoke" / "song" / "stemd.json").read_text())
    assert manifest["output"]["two_stems"] == "vocals" and manifest["output"]["format"] == "mp3"

    four = {stem: read_audio(out / "float-four" / "song" / f"{stem}.wav")[0] for stem in FOUR}
    vocals, _rate = read_audio(out / "float-two" / "song" / "vocals.wav")
    no_vocals, _rate = read_audio(out / "float-two" / "song" / "no_vocals.wav")
    assert np.abs(four["vocals"]).max() > 0.01  # audio, not silence
    np.testing.assert_array_equal(vocals, four["vocals"])
    rest = four["drums"] + four["bass"] + four["other"]
    assert np.abs(no_vocals - rest).max() <= 1e-4


def test_a_reload_gives_queued_files_the_new_rules(tmp_path: Path) -> None:
    """Rules changed by SIGHUP apply to files not yet started: the one in the
    model keeps what it was claimed with."""
    daemon, config, gate = gated_daemon(tmp_path)
    text = config.read_text()
    make_mix(tmp_path / "inbox" / "first.flac", seconds=3.0)
    make_mix(tmp_path / "inbox" / "later" / "second.flac", seconds=2.0)
    daemon.start()
    try:
        daemon.wait_ready()
        wait_until((gate / "entered").exists, 60, "a job in the model")
        # both were hashed before the first claim: the other one is queued, keyed wav
        assert "first.flac: new input" in daemon.log()
        assert "second.flac: new input" in daemon.log()
        assert daemon.report()["counts"]["queued"] == 1
        config.write_text(text + "rules:\n- match: '**'\n  format: flac\n")
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in daemon.log(), 30, "the reload")
        (gate / "open").touch()
        wait_until(lambda: daemon.report()["counts"]["done"] == 2, 120, "both jobs done")
        assert daemon.stop() == 0
    finally:
        (gate / "open").touch()
        daemon.kill()
    log = daemon.log()
    out = tmp_path / "outbox"
    started = log.split("configuration reloaded")[0]
    held, queued = (
        ("first", "second") if "first.flac: separating" in started else ("second", "first")
    )
    assert {p.suffix for p in out.rglob(f"{held}/*") if p.suffix != ".json"} == {".wav"}
    assert {p.suffix for p in out.rglob(f"{queued}/*") if p.suffix != ".json"} == {".flac"}
