"""Corrupt input: a file that decodes, with errors, to a fraction of itself
fails and says both lengths; a few bad frames in a long file are a warning.

Real files from real encoders, damaged byte by byte; the real decoders (sphn,
then ffmpeg) and stemd's decode into a work area.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from stemd.config import load_config
from stemd.errors import InputError
from stemd.separation.engine import ModelInfo
from stemd.separation.workfiles import WorkArea
from stemd.track import decode_track
from support.audio import make_tone

INFO = ModelInfo(
    name="test",
    folder="test",
    samplerate=44100,
    audio_channels=2,
    sources=("drums", "bass", "other", "vocals"),
    weights="",
    device="cpu",
    models_in_bag=1,
)


def garbage_after(path: Path, keep: int) -> Path:
    """The file's first `keep` bytes, then random bytes up to its old size."""
    data = path.read_bytes()
    noise = random.Random(5).randbytes(len(data) - keep)
    path.write_bytes(data[:keep] + noise)
    return path


@pytest.mark.parametrize(
    ("name", "keep", "announced"), [("a.mp3", 3000, 10.0), ("a.flac", 20000, 10.0)]
)
def test_a_file_that_decodes_with_errors_to_a_fraction_of_itself_fails(
    tmp_path: Path, name: str, keep: int, announced: float
) -> None:
    song = garbage_after(make_tone(tmp_path / name, announced), keep)
    work = WorkArea(tmp_path / "state").job("job1-1")
    with pytest.raises(InputError) as caught:
        decode_track(INFO, load_config(None), song, work)
    reason = caught.value.reason
    assert reason.startswith("corrupt: it decodes to ")
    decoded = float(reason.split("decodes to ")[1].split("s of")[0])
    assert 0 < decoded < 2.0  # what the frames before the garbage hold
    assert f"of the {announced:.1f}s" in reason  # and what the file should hold
    assert "decoder error" in reason and "replace the file" in reason


def test_one_bad_frame_in_a_long_file_is_a_warning_and_the_track_decodes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    song = make_tone(tmp_path / "long.mp3", 60.0)
    data = bytearray(song.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 600] = random.Random(6).randbytes(600)  # one frame or two
    song.write_bytes(bytes(data))
    work = WorkArea(tmp_path / "state").job("job1-1")
    with caplog.at_level(logging.WARNING, logger="stemd"):
        loaded = decode_track(INFO, load_config(None), song, work)
    assert abs(loaded.duration - 60.0) < 0.5
    assert any(
        "decoder error" in r.getMessage() and "separated anyway" in r.getMessage()
        for r in caplog.records
    )


def test_a_clean_file_decodes_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    song = make_tone(tmp_path / "clean.mp3", 5.0)
    work = WorkArea(tmp_path / "state").job("job1-1")
    with caplog.at_level(logging.WARNING, logger="stemd"):
        loaded = decode_track(INFO, load_config(None), song, work)
    assert loaded.decoded.errors == [] and not caplog.records
    assert work.mix_path.stat().st_size == loaded.frames * 2 * 4
