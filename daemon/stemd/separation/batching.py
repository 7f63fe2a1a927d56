"""The chunk plan of `demucs.apply.apply_model`, for batched forward passes.

apply_model runs one chunk per forward pass, recursing through bag -> shifts ->
split -> chunk. Here the same chunks are planned up front, so that they can go
through the model `batch_size` at a time; stemd.separation.streaming adds their results up
exactly as apply_model does:

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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from demucs.htdemucs import HTDemucs

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
