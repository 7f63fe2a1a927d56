"""Batched separation: `demucs.apply.apply_model`'s arithmetic, several chunks per
forward pass.

apply_model runs one chunk per forward pass, recursing through bag -> shifts ->
split -> chunk. Here the same chunks are planned up front, for every shift of a
model at once, run through the model `batch_size` at a time, and accumulated
exactly as apply_model accumulates them:

- bag: each model's estimate scaled by its per-source weight, summed, divided
  by the sum of the weights;
- shifts: the mix zero-padded by max_shift (0.5 s) on both sides, each shift a
  window starting at a random offset drawn with `random.randint` in apply_model's
  order (model by model, shift by shift), so a seeded `random` gives the same
  offsets; the estimates averaged after cutting the shift off again;
- split: chunks of the model's segment every (1 - overlap) segments, each
  centre-padded to the model's valid length with the neighbouring audio (zeros
  past the ends), centre-trimmed after the pass, weighted by a triangle and
  normalised by the summed weights.

Only the forward passes are batched; every sum runs in apply_model's order.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs
from demucs.utils import center_trim

# (chunks done, chunks in all) after each forward pass; raise to stop
BatchHook = Callable[[int, int], None]
# runs the model on a [batch, channels, time] input; the engine supplies device,
# precision and out-of-memory handling
Forward = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]

TRANSITION_POWER = 1.0  # apply_model's default; the demucs CLI never changes it


@dataclass(frozen=True)
class Chunk:
    """One forward pass's worth of one shift's window."""

    shift: int  # index of the shift (window) it belongs to
    offset: int  # where its output goes in that window
    length: int  # samples of real output (the last chunk may be shorter)
    start: int  # where its padded input starts in the source tensor (may be < 0)
    valid_length: int  # the padded input's length, as the model wants it


def segment_length(model: Any, segment: float | None) -> int:
    """A chunk's length in samples: `segment` seconds, or the model's own."""
    return int(model.samplerate * (model.segment if segment is None else segment))


def model_valid_length(model: Any, length: int, segment: float | None) -> int:
    """The input length apply_model pads a chunk of `length` to."""
    if isinstance(model, HTDemucs) and segment is not None:
        return int(segment * model.samplerate)
    if hasattr(model, "valid_length"):
        return int(model.valid_length(length))
    return length


def triangle_weight(segment_length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    weight = torch.cat(
        [
            torch.arange(1, segment_length // 2 + 1, device=device),
            torch.arange(segment_length - segment_length // 2, 0, -1, device=device),
        ]
    )
    return (weight / weight.max()) ** TRANSITION_POWER


def padded_slice(source: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """source[..., start:start+length], zeros where that runs past either end
    (TensorChunk.padded's rule)."""
    total = source.shape[-1]
    lo, hi = max(0, start), min(total, start + length)
    return F.pad(source[..., lo:hi], (lo - start, start + length - hi))


def plan_chunks(
    model: Any,
    windows: Sequence[tuple[int, int]],  # (start in source, length) per shift
    segment: float | None,
    overlap: float,
) -> list[Chunk]:
    """Every chunk of every window, in apply_model's order."""
    chunk_length = segment_length(model, segment)
    stride = int((1 - overlap) * chunk_length)
    chunks = []
    for shift, (window_start, window_length) in enumerate(windows):
        for offset in range(0, window_length, stride):
            length = min(window_length - offset, chunk_length)
            valid = model_valid_length(model, length, segment)
            start = window_start + offset - (valid - length) // 2
            chunks.append(Chunk(shift, offset, length, start, valid))
    return chunks


def batches(chunks: list[Chunk], batch_size: int) -> Iterator[list[Chunk]]:
    """Runs of up to `batch_size` consecutive chunks of equal padded length."""
    run: list[Chunk] = []
    for chunk in chunks:
        if run and (len(run) == batch_size or chunk.valid_length != run[0].valid_length):
            yield run
            run = []
        run.append(chunk)
    if run:
        yield run


def separate_batched(
    model: Any,
    mix: torch.Tensor,
    forward: Forward,
    batch_size: int,
    shifts: int = 1,
    overlap: float = 0.25,
    segment: float | None = None,
    on_batch: BatchHook | None = None,
    rng: random.Random | Any = random,
) -> torch.Tensor:
    """apply_model(model, mix, shifts, split=True, overlap, segment), batched.

    `mix` is [1, channels, time] on the host; the result too ([1, sources,
    channels, time]): the whole track's buffers never go to the device.
    """
    members: list[tuple[Any, list[float] | None]]
    if isinstance(model, BagOfModels):
        members = list(zip(model.models, model.weights, strict=True))
    else:
        members = [(model, None)]
    plans = []  # offsets drawn first, in apply_model's order: model by model, shift by shift
    for member, weights in members:
        offsets, windows = _windows(member, mix.shape[-1], shifts, rng)
        chunks = plan_chunks(member, windows, segment, overlap)
        plans.append((member, weights, offsets, windows, chunks))
    total = sum(len(chunks) for *_rest, chunks in plans)
    done = 0

    def counted(n: int) -> None:
        nonlocal done
        done += n
        if on_batch is not None:
            on_batch(done, total)

    estimates: torch.Tensor | None = None
    totals = [0.0] * len(model.sources)
    for member, weights, offsets, windows, chunks in plans:
        out = _apply_one(
            member, mix, offsets, windows, chunks, forward, batch_size, segment, counted
        )
        if weights is None:
            return out
        for k, weight in enumerate(weights):
            out[:, k, :, :] *= weight
            totals[k] += weight
        estimates = out if estimates is None else estimates.add_(out)
    assert estimates is not None
    for k in range(estimates.shape[1]):
        estimates[:, k, :, :] /= totals[k]
    return estimates


def _windows(
    model: Any, length: int, shifts: int, rng: random.Random | Any
) -> tuple[list[int], list[tuple[int, int]]]:
    """Shift offsets and (start, length) of each window in the source tensor."""
    if not shifts:
        return [], [(0, length)]
    max_shift = int(0.5 * model.samplerate)
    offsets = [rng.randint(0, max_shift) for _ in range(shifts)]
    return offsets, [(offset, length + max_shift - offset) for offset in offsets]


def _apply_one(
    model: Any,
    mix: torch.Tensor,
    offsets: list[int],
    windows: list[tuple[int, int]],
    chunks: list[Chunk],
    forward: Forward,
    batch_size: int,
    segment: float | None,
    counted: Callable[[int], None],
) -> torch.Tensor:
    """One model: its shift windows' chunks, batched across windows.

    A window's buffers exist from its first chunk to its last (then it is
    normalised and added to the average), so at most two windows' buffers live
    at once, however many shifts: a long track's memory stays bounded.
    """
    length = mix.shape[-1]
    max_shift = int(0.5 * model.samplerate)
    # with shifts, apply_model's TensorChunk(mix).padded(length + 2 * max_shift)
    source = padded_slice(mix, -max_shift, length + 2 * max_shift) if offsets else mix
    weight = triangle_weight(segment_length(model, segment))
    shape = (1, len(model.sources), mix.shape[1])
    left = [0] * len(windows)  # chunks still to come, per window
    for chunk in chunks:
        left[chunk.shift] += 1
    live: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # window -> (sum, weights)
    averaged: torch.Tensor | None = None
    for run in batches(chunks, batch_size):
        batch = torch.cat([padded_slice(source, c.start, c.valid_length) for c in run])
        result = forward(model, batch)
        for i, chunk in enumerate(run):
            if chunk.shift not in live:
                n = windows[chunk.shift][1]
                live[chunk.shift] = (
                    torch.zeros(*shape, n, device=mix.device),
                    torch.zeros(n, device=mix.device),
                )
            out, total = live[chunk.shift]
            piece = center_trim(result[i : i + 1], chunk.length)
            end = chunk.offset + chunk.length
            out[..., chunk.offset : end] += (weight[: chunk.length] * piece).to(mix.device)
            total[chunk.offset : end] += weight[: chunk.length].to(mix.device)
            left[chunk.shift] -= 1
            if left[chunk.shift] == 0:  # windows finish in order: sum in apply_model's order
                del live[chunk.shift]
                assert total.min() > 0
                out /= total
                if not offsets:  # no shifts: the one window is the estimate
                    averaged = out
                    continue
                part = out[..., max_shift - offsets[chunk.shift] :]
                # the first window's buffer becomes the sum (it is not read again): on
                # a long track a copy would be one more full set of stems in memory
                averaged = part if averaged is None else averaged.add_(part)
        counted(len(run))
    assert averaged is not None and not live
    return averaged.div_(len(offsets)) if offsets else averaged
