"""Encode stems, in blocks, with demucs' arithmetic.

A stem is read from its work file a block at a time and fed to its encoder:
WAV written here (demucs' encode_wav, header first: the length is known), mp3
through lameenc (demucs' encode_mp3; the encoder keeps its own state between
blocks), FLAC through ffmpeg's stdin (demucs' encode_ffmpeg). The clip rule
needs the stem's peak, taken when the work file was written; with it, every
sample is converted exactly as demucs converts the whole tensor.
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import lameenc
import numpy as np
import torch

from stemd.audio.children import FFMPEG_TIMEOUT_S, CancelCheck, ffmpeg_input, last_line, run
from stemd.audio.peaks import Peaks
from stemd.audio.resample import resampled_blocks, resampled_frames
from stemd.errors import JobCancelled, StemdError

BLOCK_FRAMES = 1 << 18  # about 6 s at 44.1 kHz
MP3_QUALITY = 2  # demucs' preset: 2 is lame's highest quality


@dataclass(frozen=True)
class StemFormat:
    format: str  # wav | flac | mp3
    sample_format: str  # s16 | s24 | f32
    mp3_bitrate: int
    clip: str  # rescale | clamp | none


class StemReader(Protocol):
    """A stem's samples, read in blocks, and its peak (largest absolute sample)."""

    @property
    def frames(self) -> int: ...

    @property
    def channels(self) -> int: ...

    @property
    def peak(self) -> float: ...

    def read(self, start: int, count: int) -> np.ndarray: ...  # [channels, count]


class TensorReader:
    """A stem already in memory, as a StemReader."""

    def __init__(self, wav: torch.Tensor) -> None:
        self.wav = wav.detach().cpu().float()
        self.frames = int(wav.shape[-1])
        self.channels = int(wav.shape[0])
        self.peak = float(self.wav.abs().max()) if self.frames else 0.0

    def read(self, start: int, count: int) -> np.ndarray:
        return self.wav[:, start : start + count].numpy()


def stems_to_write(
    stems: dict[str, torch.Tensor], two_stems: str | None
) -> dict[str, torch.Tensor]:
    """All stems, or STEM and no_STEM (the sum of the others), as the demucs CLI does."""
    if two_stems is None:
        return stems
    rest = torch.zeros_like(stems[two_stems])
    for name, wav in stems.items():
        if name != two_stems:
            rest += wav
    return {two_stems: stems[two_stems], f"no_{two_stems}": rest}


def _clipped_blocks(
    stem: StemReader, clip: str, cancelled: CancelCheck | None
) -> Iterator[torch.Tensor]:
    """The stem's blocks with demucs' prevent_clip applied to the whole."""
    divisor: torch.Tensor | float = 1
    if clip == "rescale":
        # wav / max(1.01 * wav.abs().max(), 1), in float32 as demucs computes it
        scaled = torch.tensor(stem.peak, dtype=torch.float32) * 1.01
        divisor = scaled if scaled > 1 else 1
    elif clip not in ("clamp", "none"):
        raise ValueError(f"unknown clip mode {clip!r}")
    for start in range(0, stem.frames, BLOCK_FRAMES):
        if cancelled is not None and cancelled():
            raise JobCancelled("encoding stopped: the job was cancelled")
        count = min(BLOCK_FRAMES, stem.frames - start)
        block = torch.from_numpy(np.array(stem.read(start, count), dtype=np.float32))
        if clip == "rescale":
            block = block / divisor
        elif clip == "clamp":
            block = block.clamp(-0.99, 0.99)
        yield block


def _pcm(block: torch.Tensor, bits: int) -> bytes:
    """demucs' _pcm_bytes: interleaved little-endian integers; 24-bit samples on
    the top bits of an int32."""
    frames = block.clamp(-1, 1).t().contiguous().numpy()
    if bits == 16:
        return (frames * (2**15 - 1)).astype("<i2").tobytes()
    ints = ((frames * (2**23 - 1)).astype("<i4") << 8).view(np.uint8)
    return ints.tobytes()


def encode_stem(
    stem: StemReader,
    path: Path,
    samplerate: int,
    fmt: StemFormat,
    cancelled: CancelCheck | None = None,
    out_rate: int | None = None,
) -> Peaks:
    """Write one stem (at `samplerate`) to `path` in the configured format, at
    `out_rate` when given (resampled block by block). The clip rule is applied
    at the model's rate, where the peak was taken; the resampler's overshoot of
    a peak is clamped with the rest when samples become integers. Returns the
    stem's waveform picture (stemd.audio.peaks), taken from the blocks as they
    went to the encoder: no second read of the stem."""
    bits = 24 if fmt.sample_format == "s24" else 16
    rate = out_rate or samplerate
    frames = resampled_frames(stem.frames, samplerate, rate)
    peaks = Peaks(frames)
    blocks = _observed(
        resampled_blocks(
            _clipped_blocks(stem, fmt.clip, cancelled),
            stem.channels,
            stem.frames,
            samplerate,
            rate,
        ),
        peaks,
    )
    try:
        if fmt.format == "flac":
            _encode_flac(blocks, stem.channels, path, rate, bits, cancelled)
        elif fmt.format == "mp3":
            _encode_mp3(blocks, stem.channels, path, rate, fmt.mp3_bitrate)
        elif fmt.format == "wav":
            _encode_wav(blocks, stem.channels, frames, path, rate, bits, fmt.sample_format == "f32")
        else:
            raise ValueError(f"unknown format {fmt.format!r}")
    except (RuntimeError, OSError) as err:
        raise StemdError(f"{path}: cannot encode the stem: {err}") from err
    return peaks


def _observed(blocks: Iterator[torch.Tensor], peaks: Peaks) -> Iterator[torch.Tensor]:
    """The blocks as they are, each shown to `peaks` on its way to the encoder
    (clamped as every encoder clamps it)."""
    for block in blocks:
        peaks.add(block.clamp(-1, 1).numpy())
        yield block


def encode(
    wav: torch.Tensor,
    path: Path,
    samplerate: int,
    fmt: StemFormat,
    cancelled: CancelCheck | None = None,
) -> Peaks:
    """Write one stem held in memory ([channels, samples])."""
    return encode_stem(TensorReader(wav), path, samplerate, fmt, cancelled)


def _encode_wav(
    blocks: Iterator[torch.Tensor],
    channels: int,
    frames: int,
    path: Path,
    samplerate: int,
    bits: int,
    as_float: bool,
) -> None:
    """demucs' encode_wav, header first."""
    audio_format, bits = (3, 32) if as_float else (1, bits)
    data_size = frames * channels * bits // 8
    fmt = struct.pack(
        "<HHIIHH",
        audio_format,
        channels,
        samplerate,
        samplerate * channels * bits // 8,
        channels * bits // 8,
        bits,
    )
    chunks = [(b"fmt ", len(fmt), fmt)]
    if as_float:
        chunks.append((b"fact", 4, struct.pack("<I", frames)))
    riff_size = 4 + sum(8 + size for _, size, _ in chunks) + 8 + data_size
    with open(path, "wb") as out:
        out.write(b"RIFF" + struct.pack("<I", riff_size) + b"WAVE")
        for name, size, content in chunks:
            out.write(name + struct.pack("<I", size) + content)
        out.write(b"data" + struct.pack("<I", data_size))
        for block in blocks:
            if as_float:
                out.write(block.clamp(-1, 1).t().contiguous().numpy().astype("<f4").tobytes())
            elif bits == 24:
                # keep only the top 3 bytes of each little-endian int32 sample
                out.write(
                    np.frombuffer(_pcm(block, 24), dtype=np.uint8).reshape(-1, 4)[:, 1:].tobytes()
                )
            else:
                out.write(_pcm(block, 16))


def _encode_mp3(
    blocks: Iterator[torch.Tensor], channels: int, path: Path, samplerate: int, bitrate: int
) -> None:
    """demucs' encode_mp3; lame keeps its state between blocks."""
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(bitrate)
    encoder.set_in_sample_rate(samplerate)
    encoder.set_channels(channels)
    encoder.set_quality(MP3_QUALITY)
    with open(path, "wb") as out:
        for block in blocks:
            pcm = (block.clamp(-1, 1) * (2**15 - 1)).short()  # demucs' i16_pcm
            out.write(encoder.encode(pcm.t().contiguous().numpy().tobytes()))
        out.write(encoder.flush())


def _encode_flac(
    blocks: Iterator[torch.Tensor],
    channels: int,
    path: Path,
    samplerate: int,
    bits: int,
    cancelled: CancelCheck | None,
) -> None:
    """demucs.audio.encode_ffmpeg's command, with our child-process rules."""
    command = [
        "ffmpeg",
        "-nostdin",
        "-timelimit",
        str(int(FFMPEG_TIMEOUT_S)),
        "-y",
        "-loglevel",
        "error",
        "-protocol_whitelist",
        "file,pipe",
        "-f",
        "s16le" if bits == 16 else "s32le",
        "-ar",
        str(samplerate),
        "-ac",
        str(channels),
        "-i",
        "pipe:0",
        ffmpeg_input(path),  # file:PATH works for outputs too
    ]
    feed = (_pcm(block, bits) for block in blocks)
    try:
        result = run(command, FFMPEG_TIMEOUT_S, cancelled, feed=feed)
    except subprocess.TimeoutExpired:
        raise StemdError(f"{path}: ffmpeg took over {FFMPEG_TIMEOUT_S:.0f}s to encode") from None
    if result.returncode != 0:
        raise StemdError(f"{path}: cannot encode the stem: {last_line(result.stderr, path)}")
