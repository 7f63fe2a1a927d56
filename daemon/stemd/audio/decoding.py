"""Decode any input, in blocks, to the model's rate and channels.

Decoding follows demucs' own loader (sphn first, then ffmpeg) so stems match
`python -m demucs.separate`, but never holds the whole track: blocks of
BLOCK_SECONDS go to a sink (the job's work file) as they are decoded.

- sphn is asked for one block at a time. Each request seeks, and an mp3
  decoder that starts at a seek point has not yet rebuilt its state (the bit
  reservoir, the overlap of the previous frame), so each request starts
  PREROLL_SECONDS early and that lead-in is dropped: the blocks are then the
  very samples a single whole-file decode gives (tests/integration/test_audio).
- Rates other than the model's are converted as demucs does (julius'
  resample_frac), block by block with the neighbouring samples each output needs
  (BlockResampler), which is the same arithmetic on the same numbers.
- What sphn cannot read goes to ffmpeg, which resamples itself, as before; its
  output is read from the pipe as it comes.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import sphn
import torch
import torch.nn.functional as F
from demucs.audio import convert_audio_channels
from julius.resample import ResampleFrac

from stemd.audio.children import (
    FFMPEG_TIMEOUT_S,
    CancelCheck,
    failure_in_words,
    ffmpeg_input,
    run,
)
from stemd.audio.probe import Probe, probe
from stemd.errors import InputError, JobCancelled

BLOCK_SECONDS = 30.0
PREROLL_SECONDS = 1.0
TAIL_MATCH = 2048  # samples of the previous block a new one is placed by
FLOAT_BYTES = 4


class BlockSink(Protocol):
    """Where decoded blocks go: [channels, n] float32 at the model's rate."""

    def write(self, block: np.ndarray) -> None: ...

    def reset(self) -> None:
        """Forget every block written: decoding starts again with another decoder."""
        ...


@dataclass
class Decoded:
    """What a decode produced and what the decoder complained about."""

    frames: int = 0  # at the model's rate
    decoder: str = ""  # sphn | ffmpeg
    errors: list[str] = field(default_factory=list)  # decoder error lines


class BlockResampler:
    """julius.resample_frac(x, old, new), fed and emptied block by block.

    resample_frac pads the whole signal by `width` samples on the left (and
    width + old on the right) by repeating its edge samples, then convolves with
    a stride of `old` (the reduced rate): output frame f (`new` samples) reads
    input [f*old - width, f*old + old + width). Here each frame is computed as
    soon as its input has arrived, with the real neighbours in between blocks.
    """

    def __init__(self, old: int, new: int) -> None:
        self._resample = ResampleFrac(old, new)
        self.old, self.new = self._resample.old_sr, self._resample.new_sr  # reduced
        self.width = int(self._resample._width)
        self._kernel: torch.Tensor = self._resample.kernel  # type: ignore[assignment]
        self._pending: torch.Tensor | None = None  # input from frame `_frame`'s window start
        self._frame = 0  # the next output frame
        self._received = 0  # input samples so far

    def push(self, block: torch.Tensor) -> torch.Tensor:
        """Resample [channels, n]; returns what can be computed so far."""
        if block.shape[-1] == 0:
            return block[..., :0]
        if self._pending is None:  # the left edge: repeat the first sample
            left = block[:, :1].expand(-1, self.width)
            self._pending = torch.cat([left, block], -1)
        else:
            self._pending = torch.cat([self._pending, block], -1)
        self._received += block.shape[-1]
        # frames whose whole window has arrived
        ready = (self._pending.shape[-1] - self.old - 2 * self.width) // self.old + 1
        return self._emit(max(0, ready))

    def finish(self) -> torch.Tensor:
        """The rest, with the right edge's repeated samples; then the output has
        floor(n * new / old) samples in all, as resample_frac gives."""
        if self._pending is None:
            return torch.zeros(0)
        right = self._pending[:, -1:].expand(-1, self.width + self.old)
        self._pending = torch.cat([self._pending, right], -1)
        total = math.floor(self.new * self._received / self.old)
        frames = math.ceil(total / self.new) - self._frame
        out = self._emit(max(0, frames))
        keep = total - (self._frame - max(0, frames)) * self.new
        return out[..., :keep]

    def _emit(self, frames: int) -> torch.Tensor:
        assert self._pending is not None
        if frames == 0:
            return self._pending[:, :0]
        span = (frames - 1) * self.old + self.old + 2 * self.width
        x = self._pending[:, :span]
        ys = F.conv1d(x[:, None], self._kernel, stride=self.old)
        self._pending = self._pending[:, frames * self.old :]
        self._frame += frames
        return ys.transpose(1, 2).reshape(x.shape[0], -1)


def decode_to(
    path: Path,
    samplerate: int,
    channels: int,
    sink: BlockSink,
    info: Probe | None = None,
    cancelled: CancelCheck | None = None,
) -> Decoded:
    """Decode the file into `sink` as float32 [channels, n] blocks at `samplerate`.

    sphn first (what demucs does), then ffmpeg for what sphn cannot read (the
    sink is reset first). Pass the `probe` result when the caller already has
    it: the ffmpeg path needs it. `cancelled` is asked between blocks and while
    ffmpeg runs; when true, decoding stops with JobCancelled.
    """
    errors: list[str] = []
    try:
        result = _decode_sphn(path, samplerate, channels, sink, cancelled)
    except (InputError, JobCancelled):
        raise
    except Exception as err:  # sphn raises plain exceptions for anything it cannot read
        errors.append(f"sphn: {err}")
        result = None
    if result is None:
        sink.reset()
        info = info or probe(path)
        if info.channels < 1:
            raise InputError(path, "the audio stream has no channels")
        try:
            result = _decode_ffmpeg(path, samplerate, channels, info.channels, sink, cancelled)
        except InputError as err:
            errors.append(f"ffmpeg: {err.reason}")
            raise InputError(path, "cannot decode audio: " + "; ".join(errors)) from None
    if result.frames == 0:
        raise InputError(path, "the file holds no audio samples")
    return result


class SeekMismatch(Exception):
    """sphn's seek landed where no sample lines up with the previous block."""


def _decode_sphn(
    path: Path, samplerate: int, channels: int, sink: BlockSink, cancelled: CancelCheck | None
) -> Decoded | None:
    """sphn's decode, block by block; None when sphn finds no audio at all.

    Every block after the first is asked for with PREROLL_SECONDS of lead-in,
    and placed by matching that lead-in against the end of the block before:
    sphn seeks a sample early in some files (time rounding) and a whole packet
    off in others (Ogg Vorbis), so where a block really starts is checked, not
    assumed. A block that matches nowhere raises SeekMismatch (then ffmpeg
    decodes the file).
    """
    reader = sphn.FileReader(str(path))
    rate = int(reader.sample_rate)
    block, preroll = int(BLOCK_SECONDS * rate), int(PREROLL_SECONDS * rate)
    resampler = BlockResampler(rate, samplerate) if rate != samplerate else None
    result = Decoded(decoder="sphn")
    position = 0  # in source samples
    tail = np.zeros((0, 0), dtype=np.float32)  # the end of the previous block
    while True:
        if cancelled is not None and cancelled():
            raise JobCancelled("decoding stopped: the job was cancelled")
        start = max(0, position - preroll)
        # sphn turns seconds into samples by flooring: ask for the middle of a sample
        data = reader.decode((start + 0.5) / rate, (position + block - start + 0.5) / rate)
        skip = position - start if position == 0 else _lead_in(data, tail, position - start)
        data = data[:, skip:][:, :block]
        if data.shape[-1] == 0:
            break
        position += data.shape[-1]
        tail = (
            np.concatenate([tail, data], -1)[:, -TAIL_MATCH:]
            if tail.size
            else data[:, -TAIL_MATCH:]
        )
        wav = _checked(path, convert_audio_channels(torch.from_numpy(data), channels))  # type: ignore[no-untyped-call]
        if resampler is not None:
            wav = resampler.push(wav)
        _write(sink, wav, result)
    if position == 0:
        return None
    if resampler is not None:
        _write(sink, resampler.finish(), result)
    return result


def _lead_in(data: np.ndarray, tail: np.ndarray, expected: int) -> int:
    """How many samples of `data` come before the next new sample: where the
    previous block's `tail` ends inside it (`expected` if sphn seeked exactly)."""
    n, size = int(tail.shape[-1]), int(data.shape[-1])
    if size >= expected and np.array_equal(data[:, expected - n : expected], tail):
        return expected
    # candidates: where the tail's first sample value occurs, nearest the
    # expected place first (in digital silence several match; any of them is
    # silence, but the nearest keeps the length closest to the file's)
    candidates = np.flatnonzero(data[0] == tail[0, 0])
    for at in sorted(candidates, key=lambda at: abs(int(at) + n - expected)):
        if at + n <= size and np.array_equal(data[:, at : at + n], tail):
            return int(at) + n
    if size < expected:
        return size  # past the end: nothing new
    raise SeekMismatch(f"a block read after a seek matches none of the {n} samples before it")


def _decode_ffmpeg(
    path: Path,
    samplerate: int,
    channels: int,
    source_channels: int,
    sink: BlockSink,
    cancelled: CancelCheck | None,
) -> Decoded:
    command = _decode_command(path, "file,pipe", "-f", "f32le", "-ar", str(samplerate), "pipe:1")
    result = Decoded(decoder="ffmpeg")
    frame_bytes = FLOAT_BYTES * source_channels
    pending = bytearray()

    def consume(data: bytes) -> None:
        pending.extend(data)
        whole = len(pending) - len(pending) % frame_bytes
        if whole:
            samples = np.frombuffer(bytes(pending[:whole]), dtype="<f4")
            del pending[:whole]
            wav = torch.from_numpy(samples.copy()).view(-1, source_channels).t()
            converted = convert_audio_channels(wav, channels)  # type: ignore[no-untyped-call]
            _write(sink, _checked(path, converted), result)

    done = _run_decoder(command, path, cancelled, consume)
    result.errors = _error_lines(done.stderr, path)
    if done.returncode != 0 and result.frames == 0:
        raise InputError(path, failure_in_words("ffmpeg cannot decode it", done.stderr, path))
    # decoding errors with audio decoded (ffmpeg then exits non-zero too): the
    # caller weighs what decoded against what the file should hold
    return result


def _run_decoder(
    command: list[str],
    path: Path,
    cancelled: CancelCheck | None,
    consume: Callable[[bytes], None] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    try:
        return run(command, FFMPEG_TIMEOUT_S, cancelled, consume=consume)
    except subprocess.TimeoutExpired:
        raise InputError(path, f"ffmpeg took over {FFMPEG_TIMEOUT_S:.0f}s on it") from None


def _decode_command(path: Path, protocols: str, *output: str) -> list[str]:
    """ffmpeg decoding the file's first audio stream, one thread, errors only,
    under a CPU-time limit (it ends even if stemd is gone), into `output`."""
    return [
        *("ffmpeg", "-nostdin", "-timelimit", str(int(FFMPEG_TIMEOUT_S))),
        *("-hide_banner", "-loglevel", "error", "-protocol_whitelist", protocols),
        *("-i", ffmpeg_input(path), "-map", "0:a:0", "-threads", "1"),
        *output,
    ]


def _error_lines(stderr: bytes, path: Path) -> list[str]:
    """ffmpeg's error lines, without the file name and the decoder's address
    (`[mp3float @ 0x5555...] Header missing` -> `mp3float: Header missing`)."""
    prefix = re.escape(ffmpeg_input(path)) + r": "
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines()]
    cleaned = [re.sub(prefix, "", line) for line in lines if line]
    return [re.sub(r"^\[(\w+) @ 0x[0-9a-f]+\] ", r"\1: ", line) for line in cleaned]


def _checked(path: Path, wav: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(wav).all():
        raise InputError(path, "the decoded audio holds NaN or infinite samples")
    return wav


def _write(sink: BlockSink, wav: torch.Tensor, result: Decoded) -> None:
    if wav.shape[-1]:
        sink.write(np.ascontiguousarray(wav.numpy(), dtype=np.float32))
        result.frames += wav.shape[-1]


class MemorySink:
    """Blocks gathered in memory: for short audio (tests, the bench's floor)."""

    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []

    def write(self, block: np.ndarray) -> None:
        self.blocks.append(block.copy())

    def reset(self) -> None:
        self.blocks.clear()

    def tensor(self, channels: int) -> torch.Tensor:
        if not self.blocks:
            return torch.zeros(channels, 0)
        return torch.from_numpy(np.concatenate(self.blocks, -1))


def decode(
    path: Path,
    samplerate: int,
    channels: int,
    info: Probe | None = None,
    cancelled: CancelCheck | None = None,
) -> torch.Tensor:
    """The whole file as a [channels, samples] tensor: `decode_to` into memory."""
    sink = MemorySink()
    decode_to(path, samplerate, channels, sink, info, cancelled)
    return sink.tensor(channels).contiguous()


def decoder_errors(path: Path, cancelled: CancelCheck | None = None) -> list[str]:
    """What ffmpeg reports while decoding the whole file to nowhere: bad frames
    that sphn conceals or skips without a word. Empty for a clean file."""
    command = _decode_command(path, "file", "-f", "null", "-")
    return _error_lines(_run_decoder(command, path, cancelled).stderr, path)
