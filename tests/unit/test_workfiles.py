"""Work files: what goes in comes out, windows past the ends are silence, the
statistics are demucs' own, and a full disk is said as such."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from stemd.errors import WorkAreaFull
from stemd.separation.workfiles import RawAudio, RunningStats, WorkArea


def noise(channels: int, frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.3, (channels, frames)).astype(np.float32)


def test_blocks_appended_read_back_in_any_window(tmp_path: Path) -> None:
    audio = noise(2, 10_000)
    with RawAudio(tmp_path / "mix.f32", 2) as raw:
        for start in range(0, 10_000, 777):
            raw.append(audio[:, start : start + 777])
        assert raw.frames == 10_000
        assert raw.peak == float(np.abs(audio).max())
        assert np.array_equal(raw.read(1234, 5000), audio[:, 1234:6234])
        # before the start and past the end: zeros, as demucs pads
        window = raw.read(-100, 300)
        assert np.array_equal(window[:, :100], np.zeros((2, 100), np.float32))
        assert np.array_equal(window[:, 100:], audio[:, :200])
        tail = raw.read(9_900, 300)
        assert np.array_equal(tail[:, :100], audio[:, 9_900:])
        assert not tail[:, 100:].any()
    # the file is raw interleaved float32: a second reader sees the same frames
    with RawAudio(tmp_path / "mix.f32", 2, create=False) as again:
        assert again.frames == 10_000
        assert np.array_equal(again.read(0, 10_000), audio)


def test_a_block_of_the_wrong_channel_count_is_refused(tmp_path: Path) -> None:
    with RawAudio(tmp_path / "mix.f32", 2) as raw, pytest.raises(ValueError, match="1 channels"):
        raw.append(noise(1, 10))


def test_running_stats_are_demucs_mean_and_std_of_the_mono_reference() -> None:
    audio = noise(2, 100_003, seed=4) + 0.05  # an offset: the mean matters too
    stats = RunningStats()
    for start in range(0, audio.shape[-1], 4096):
        stats.add(audio[:, start : start + 4096])
    ref = torch.from_numpy(audio).mean(0)  # what demucs computes, on the whole track
    result = stats.result()
    assert result.mean == pytest.approx(float(ref.mean()), abs=1e-7)
    assert result.std == pytest.approx(float(ref.std()), rel=1e-6)


def test_a_job_folder_starts_empty_and_leftovers_are_cleared(tmp_path: Path) -> None:
    area = WorkArea(tmp_path / "state")
    first = area.job("job1-1")
    (first.folder / "mix.f32").write_bytes(b"x" * 1000)
    assert not any(area.job("job1-1").folder.iterdir())  # asked again: empty
    (area.job("job2-1").folder / "stem-bass.f32").write_bytes(b"y" * 500)
    assert area.clear() == 500
    assert not any(area.root.iterdir())
    assert WorkArea(tmp_path / "nothing-yet").clear() == 0


def test_too_little_room_names_the_folder_and_the_shortfall(tmp_path: Path) -> None:
    work = WorkArea(tmp_path).job("job7-1")
    free = os.statvfs(work.folder).f_bavail * os.statvfs(work.folder).f_frsize
    frames = free // 8 + 44100 * 3600  # two channels of float32: an hour more than fits
    with pytest.raises(WorkAreaFull) as caught:
        work.check_space(frames, 2, 1)
    message = str(caught.value)
    assert str(work.folder.parent) in message and "short of" in message and "GiB" in message
    assert "state_dir" in message  # and what to do
