"""Streamed separation: `demucs.apply.apply_model`'s arithmetic, window by window.

apply_model holds the whole track, and for every shift a full-length output
buffer. Here the mix is read a chunk at a time from wherever it lives (a work
file on disk; a tensor in tests) and the stems leave in regions, so memory holds
one batch of chunks and a short window of output whatever the track's length.

The arithmetic is apply_model's (see stemd.separation.batching for the chunk plan):

- every (model, shift) pair is a *stream*: a window over the track starting at
  offset - max_shift (shifts) or 0 (no shifts) and ending at the track's end,
  cut into chunks that are centre-padded with neighbouring audio (zeros past the
  ends), run through the model, centre-trimmed, weighted by a triangle and
  normalised by the summed weights at each position;
- a stream's estimate at position t is final once every chunk starting at or
  before t has been added: chunks are added in order, so that is everything
  before its next chunk's start;
- once every stream is final up to some position, that region is combined as
  apply_model combines whole tracks (shifts averaged in draw order, each model
  scaled by its per-source bag weight, summed in bag order and divided by the
  summed weights) and handed to the sink.

Chunks go to the model in batches of one model's consecutive chunks of equal
padded length; the model whose next chunk is furthest behind goes first, so the
streams advance together and the output window stays a few chunks long.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from demucs.apply import BagOfModels
from demucs.utils import center_trim

from stemd.separation.batching import (
    BatchHook,
    Chunk,
    Forward,
    plan_chunks,
    segment_length,
    triangle_weight,
)
from stemd.separation.workfiles import MixStats

# the sink gets regions [sources, channels, n] in order, starting at track position 0
RegionSink = Callable[[int, torch.Tensor], None]


class MixSource(Protocol):
    """The (normalised) mix, read a window at a time."""

    @property
    def length(self) -> int: ...  # samples per channel

    def read(self, start: int, count: int) -> torch.Tensor:
        """[channels, count] from track position `start`; zeros outside the track."""
        ...


class RawFrames(Protocol):
    """A mix as stored in a work file: frames at the model's rate and channels."""

    @property
    def frames(self) -> int: ...

    def read(self, start: int, count: int) -> np.ndarray: ...  # [channels, count]


class NormalisedSource:
    """A stored mix, normalised as demucs normalises it: (x - mean) / std inside
    the track and zeros outside (demucs pads after normalising), in float32."""

    def __init__(self, raw: RawFrames, stats: MixStats) -> None:
        self.raw = raw
        self.mean = torch.tensor(stats.mean, dtype=torch.float32)
        self.std = torch.tensor(stats.std, dtype=torch.float32) + 1e-8

    @property
    def length(self) -> int:
        return int(self.raw.frames)

    def read(self, start: int, count: int) -> torch.Tensor:
        lo, hi = max(0, start), min(self.length, start + count)
        if hi <= lo:
            return torch.zeros(self.raw.read(0, 0).shape[0], count)
        data = torch.from_numpy(np.array(self.raw.read(lo, hi - lo), dtype=np.float32))
        normalised = (data - self.mean) / self.std
        return torch.nn.functional.pad(normalised, (lo - start, start + count - hi))

    def denormalise(self, region: torch.Tensor) -> torch.Tensor:
        """The model's estimate scaled back, in place."""
        return region.mul_(self.std).add_(self.mean)


class TensorSource:
    """A mix already in memory ([channels, samples]), as a MixSource."""

    def __init__(self, mix: torch.Tensor) -> None:
        self.mix = mix

    @property
    def length(self) -> int:
        return int(self.mix.shape[-1])

    def read(self, start: int, count: int) -> torch.Tensor:
        lo, hi = max(0, start), min(self.length, start + count)
        if hi <= lo:
            return self.mix.new_zeros(self.mix.shape[0], count)
        return torch.nn.functional.pad(self.mix[:, lo:hi], (lo - start, start + count - hi))


class Accumulator:
    """Weighted sums of one stream's chunk outputs over track positions
    [lo, lo + size), in buffers with room to grow: a chunk added is one write,
    not a copy of everything held (a featherweight model's 1 s chunks on a
    two-hour track are ten thousand adds)."""

    def __init__(self, sources: int, channels: int) -> None:
        self.lo = 0
        self.size = 0  # positions held
        self.sums = torch.zeros(sources, channels, 0)
        self.weights = torch.zeros(0)

    def add(self, start: int, piece: torch.Tensor, weight: torch.Tensor) -> None:
        """Add `weight * piece` ([sources, channels, n]) at track position `start`;
        what falls before position 0 (a shifted window's lead-in) is dropped."""
        if start < 0:
            piece, weight, start = piece[..., -start:], weight[-start:], 0
        end = start + piece.shape[-1]
        if end <= start:
            return
        assert start >= self.lo, "a region already handed on was added to again"
        needed = end - self.lo
        if needed > self.weights.shape[0]:  # grow by half again at least: few copies
            capacity = max(needed, self.weights.shape[0] * 3 // 2)
            sums = self.sums.new_zeros(*self.sums.shape[:2], capacity)
            weights = self.weights.new_zeros(capacity)
            sums[..., : self.size] = self.sums[..., : self.size]
            weights[: self.size] = self.weights[: self.size]
            self.sums, self.weights = sums, weights
        a, b = start - self.lo, end - self.lo
        self.sums[..., a:b].addcmul_(piece, weight)  # += weight * piece, no temporary
        self.weights[a:b] += weight
        self.size = max(self.size, b)

    def take(self, end: int) -> torch.Tensor:
        """The normalised estimate for [lo, end), forgotten afterwards."""
        n = end - self.lo
        assert 0 <= n <= self.size, "a region was taken before it was added"
        weights = self.weights[:n]
        assert n == 0 or float(weights.min()) > 0
        out = self.sums[..., :n] / weights
        rest = self.size - n  # what was added past `end` moves to the front
        if rest:
            self.sums[..., :rest] = self.sums[..., n : self.size].clone()
            self.weights[:rest] = self.weights[n : self.size].clone()
        self.sums[..., rest : self.size] = 0
        self.weights[rest : self.size] = 0
        self.size = rest
        self.lo = end
        return out


@dataclass
class Stream:
    """One model's estimate under one shift."""

    model_index: int
    shift_index: int
    window_start: int  # track position where the window (and chunk offsets) start
    chunks: list[Chunk]
    accumulator: Accumulator
    added: int = 0  # chunks added so far (they are added in order)

    def final_until(self, length: int) -> int:
        """Every position before this has all its chunks added."""
        if self.added == len(self.chunks):
            return length
        return self.window_start + self.chunks[self.added].offset


@dataclass
class Member:
    """One model of the bag (or the model), its streams, and its chunks in the
    order they go to it: merged across shifts by track position."""

    model: Any
    weights: list[float] | None
    streams: list[Stream]
    queue: list[tuple[int, Chunk]] = field(default_factory=list)  # (stream, chunk)
    next: int = 0

    def next_position(self) -> int | None:
        if self.next == len(self.queue):
            return None
        stream, chunk = self.queue[self.next]
        return self.streams[stream].window_start + chunk.offset


def separate_streamed(
    model: Any,
    source: MixSource,
    sink: RegionSink,
    forward: Forward,
    batch_size: int,
    shifts: int = 1,
    overlap: float = 0.25,
    segment: float | None = None,
    on_batch: BatchHook | None = None,
    rng: random.Random | Any = random,
    min_region: int = 0,
) -> None:
    """apply_model(model, mix, shifts, split=True, overlap, segment), streamed.

    `source` gives the normalised mix; `sink` receives the estimate in regions of
    at least `min_region` samples (the last may be shorter), in order.
    """
    length = source.length
    channels = int(source.read(0, 0).shape[0])
    sources = len(model.sources)
    pairs: list[tuple[Any, list[float] | None]]
    if isinstance(model, BagOfModels):
        pairs = list(zip(model.models, model.weights, strict=True))
    else:
        pairs = [(model, None)]
    members: list[Member] = []
    for index, (one, weights) in enumerate(pairs):  # offsets drawn in apply_model's order
        windows = _windows(one, length, shifts, rng)
        streams = [
            Stream(
                index,
                shift,
                window_start,
                plan_chunks(one, [(window_start, window_length)], segment, overlap),
                Accumulator(sources, channels),
            )
            for shift, (window_start, window_length) in enumerate(windows)
        ]
        member = Member(one, weights, streams)
        member.queue = sorted(
            ((s, chunk) for s, stream in enumerate(streams) for chunk in stream.chunks),
            key=lambda item: (streams[item[0]].window_start + item[1].offset, item[0]),
        )
        members.append(member)
    weight_of = {id(m): triangle_weight(segment_length(m.model, segment)) for m in members}
    total = sum(len(m.queue) for m in members)
    done = 0
    written = 0
    streams = [stream for member in members for stream in member.streams]
    while True:
        waiting = [(m.next_position(), i) for i, m in enumerate(members)]
        ready = [(position, i) for position, i in waiting if position is not None]
        if not ready:
            break
        member = members[min(ready)[1]]
        run = _next_batch(member, batch_size)
        batch = torch.stack([source.read(chunk.start, chunk.valid_length) for _s, chunk in run])
        result = forward(member.model, batch)
        weight = weight_of[id(member)]
        for i, (s, chunk) in enumerate(run):
            stream = member.streams[s]
            piece = center_trim(result[i], chunk.length)
            stream.accumulator.add(
                stream.window_start + chunk.offset, piece, weight[: chunk.length]
            )
            stream.added += 1
        member.next += len(run)
        done += len(run)
        if on_batch is not None:
            on_batch(done, total)
        final = min(stream.final_until(length) for stream in streams)
        if final - written >= max(1, min_region) or (final == length and final > written):
            sink(written, _combine(members, final, shifts))
            written = final
    if written < length:  # an empty track, or a region the loop did not reach
        sink(written, _combine(members, length, shifts))


def _next_batch(member: Member, batch_size: int) -> list[tuple[int, Chunk]]:
    """The member's next run of chunks: up to batch_size, of one padded length."""
    queue = member.queue[member.next :]
    first = queue[0][1].valid_length
    run: list[tuple[int, Chunk]] = []
    for item in queue:
        if len(run) == batch_size or item[1].valid_length != first:
            break
        run.append(item)
    return run


def _combine(members: list[Member], end: int, shifts: int) -> torch.Tensor:
    """Every stream's estimate up to `end`, combined as apply_model combines them."""
    estimates: torch.Tensor | None = None
    totals: list[float] = []
    for member in members:
        out: torch.Tensor | None = None
        for stream in member.streams:  # in draw order
            part = stream.accumulator.take(end)
            out = part if out is None else out.add_(part)
        assert out is not None
        if shifts > 1:  # apply_model divides by shifts; by 1 changes nothing
            out.div_(len(member.streams))
        if member.weights is None:
            return out
        if not totals:
            totals = [0.0] * out.shape[0]
        for k, weight in enumerate(member.weights):
            out[k] *= weight
            totals[k] += weight
        estimates = out if estimates is None else estimates.add_(out)
    assert estimates is not None
    for k in range(estimates.shape[0]):
        estimates[k] /= totals[k]
    return estimates


def _windows(
    model: Any, length: int, shifts: int, rng: random.Random | Any
) -> list[tuple[int, int]]:
    """(track position, length) of each shift's window; the whole track without
    shifts. apply_model pads the mix by max_shift (0.5 s) on both sides and
    takes each window at a random offset into that padded mix."""
    if not shifts:
        return [(0, length)]
    max_shift = int(0.5 * model.samplerate)
    offsets = [rng.randint(0, max_shift) for _ in range(shifts)]
    return [(offset - max_shift, length + max_shift - offset) for offset in offsets]
