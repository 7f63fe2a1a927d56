"""Stems at another rate than the model's: a streaming soxr resampler.

The models output 44.1 kHz; a 48 kHz video project or a 96 kHz archive wants
its own rate back (output.sample_rate). Blocks go through one soxr stream (its
very-high-quality filter), so memory stays at a block whatever the length, and
the output holds exactly round(frames * out / in) frames: the WAV header,
written first, states that length, and a stem lasts as long as its source.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import soxr
import torch

from stemd.config import MP3_RATES

QUALITY = "VHQ"


def stem_rate(setting: str | int, model_rate: int, source_rate: int | None, fmt: str) -> int:
    """The rate a stem is written at: output.sample_rate (model, source or N) for
    this input. mp3 knows rates up to 48 kHz: a source's rate it cannot hold
    becomes the nearest it can (a 96 kHz source gives 48 kHz mp3 stems)."""
    if setting == "model":
        rate = model_rate
    elif setting == "source":
        rate = source_rate or model_rate
    else:
        rate = int(setting)
    if fmt == "mp3" and rate not in MP3_RATES:
        rate = min(MP3_RATES, key=lambda legal: (abs(legal - rate), -legal))
    return rate


def resampled_frames(frames: int, in_rate: int, out_rate: int) -> int:
    return frames if in_rate == out_rate else round(frames * out_rate / in_rate)


def resampled_blocks(
    blocks: Iterator[torch.Tensor], channels: int, frames: int, in_rate: int, out_rate: int
) -> Iterator[torch.Tensor]:
    """[channels, n] blocks at `in_rate` (`frames` in all) as blocks at
    `out_rate`, exactly resampled_frames(...) frames in all."""
    if in_rate == out_rate:
        yield from blocks
        return
    wanted = resampled_frames(frames, in_rate, out_rate)
    stream = soxr.ResampleStream(in_rate, out_rate, channels, dtype="float32", quality=QUALITY)
    sent = 0

    def trimmed(out: np.ndarray) -> torch.Tensor | None:
        nonlocal sent
        out = out[: max(0, wanted - sent)]
        sent += len(out)
        return torch.from_numpy(np.ascontiguousarray(out.T)) if len(out) else None

    for block in blocks:
        frames_in = np.ascontiguousarray(block.t().numpy(), dtype=np.float32)
        out = trimmed(stream.resample_chunk(frames_in, last=False))
        if out is not None:
            yield out
    tail = trimmed(stream.resample_chunk(np.zeros((0, channels), dtype=np.float32), last=True))
    if tail is not None:
        yield tail
    if sent < wanted:  # the filter's rounding: a frame or two of silence at the end
        yield torch.zeros(channels, wanted - sent)
