"""`stemd separate` computes what `python -m demucs.separate` computes.

A small random-weight HTDemucs is saved into a local model repo by the test and
loaded by both through demucs' own loading code; with shifts 0, f32 output and
clip none, the stems must agree within 1e-5.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support.audio import make_tone, read_audio
from support.daemon import stemd

STEMS = ("drums", "bass", "other", "vocals")


@pytest.mark.slow
@pytest.mark.parametrize("source_name", ["mix.mp3", "mono48k.flac"])
def test_stemd_separate_matches_demucs_cli(
    tmp_path: Path, model_repo: tuple[Path, dict[str, str]], source_name: str
) -> None:
    repo, names = model_repo
    model = names["htdemucs"]
    if source_name == "mix.mp3":
        track = make_tone(tmp_path / source_name, 6.0, frequency=220)
    else:  # resampling and mono upmix go through the same path in both
        track = make_tone(tmp_path / source_name, 5.0, rate=48000, channels=1)

    reference = subprocess.run(
        [
            sys.executable,
            "-m",
            "demucs.separate",
            "-n",
            model,
            "--repo",
            str(repo),
            "-d",
            "cpu",
            "--shifts",
            "0",
            "--float32",
            "--clip-mode",
            "none",
            "-o",
            str(tmp_path / "demucs"),
            str(track),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert reference.returncode == 0, reference.stderr
    ours = stemd(
        "separate",
        "--model",
        model,
        "--repo",
        str(repo),
        "--device",
        "cpu",
        "--shifts",
        "0",
        "--sample-format",
        "f32",
        "--clip",
        "none",
        "-o",
        str(tmp_path / "stemd"),
        str(track),
        cwd=tmp_path,
        timeout=300,
    )
    assert ours.returncode == 0, ours.stderr

    stem_name = track.name.rsplit(".", 1)[0]
    for stem in STEMS:
        expected, rate_a = read_audio(tmp_path / "demucs" / model / stem_name / f"{stem}.wav")
        actual, rate_b = read_audio(tmp_path / "stemd" / model / stem_name / f"{stem}.wav")
        assert rate_a == rate_b == 44100
        assert expected.shape == actual.shape
        assert np.abs(expected).max() > 1e-3, "the reference stem is silent: nothing compared"
        difference = float(np.abs(expected - actual).max())
        assert difference <= 1e-5, f"{stem}: max abs difference {difference:.2e}"
