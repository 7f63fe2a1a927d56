"""The waveform picture the encoder takes as it writes a stem (stemd.audio.peaks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stemd.audio import PEAKS, StemFormat, encode, write_peaks
from stemd.audio.peaks import SCALE, Peaks


def whole(signal: np.ndarray, span: int) -> tuple[np.ndarray, np.ndarray]:
    """min and max per span, computed over the whole signal at once."""
    low, high = signal.min(axis=0), signal.max(axis=0)
    starts = np.arange(0, signal.shape[1], span)
    return np.minimum.reduceat(low, starts), np.maximum.reduceat(high, starts)


@pytest.mark.parametrize("frames", [1, 999, 2000, 12_345, 100_003])
def test_blocks_of_any_size_give_the_picture_of_the_whole(frames: int) -> None:
    rng = np.random.default_rng(frames)
    signal = rng.uniform(-1, 1, (2, frames)).astype(np.float32)
    peaks = Peaks(frames, points=2000)
    start = 0
    while start < frames:  # blocks that straddle spans, of ragged sizes
        count = int(rng.integers(1, 5000))
        peaks.add(signal[:, start : start + count])
        start += count
    low, high = whole(signal, peaks.span)
    assert peaks.points == len(low) <= 2000
    picture = peaks.as_json()
    assert picture["min"] == [int(v) for v in np.rint(low * SCALE)]
    assert picture["max"] == [int(v) for v in np.rint(high * SCALE)]


def test_the_encoder_writes_a_stem_and_returns_its_picture(tmp_path: Path) -> None:
    t = torch.arange(44_100 * 3) / 44_100
    loud_then_quiet = torch.where(t < 1.5, 0.9, 0.1) * torch.sin(2 * torch.pi * 220 * t)
    wav = torch.stack([loud_then_quiet, -loud_then_quiet])
    peaks = encode(wav, tmp_path / "vocals.wav", 44_100, StemFormat("wav", "s16", 320, "clamp"))
    assert (tmp_path / "vocals.wav").stat().st_size > 44_100 * 3 * 4
    write_peaks(tmp_path / PEAKS, 44_100, {"vocals": peaks})
    data = json.loads((tmp_path / PEAKS).read_text())
    assert data["frames"] == 44_100 * 3 and data["samplerate"] == 44_100
    picture = data["stems"]["vocals"]
    half = len(picture["max"]) // 2
    assert min(picture["max"][: half - 1]) >= 80  # a span holds a third of a period
    assert max(picture["max"][half + 1 :]) <= 13  # 0.1 of 127
    assert picture["min"][0] == -picture["max"][0]  # both channels count
    assert (tmp_path / PEAKS).stat().st_size < 20_000
