"""A stem's waveform picture in a few thousand points: `peaks.json`.

The encoder hands every block it writes to a `Peaks` (stemd.audio.encoding), so
the picture costs no second read of a stem: for each of `points` equal spans of
the stem (at the rate it is written), the lowest and highest sample of any
channel, as integers of -127..127 (8 bits of a picture are plenty, and keep the
file small: about 50 KB for four stems). The page draws it on a canvas before
any stem is fetched.

    {"version": 1, "samplerate": 44100, "frames": 52920000, "span": 26460,
     "points": 2000, "scale": 127,
     "stems": {"vocals": {"min": [-3, ...], "max": [4, ...]}, ...}}

Point i covers frames [i * span, (i + 1) * span) of every stem (the last may be
shorter); a value v is v / scale of full scale.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

PEAKS = "peaks.json"
POINTS = 2000
SCALE = 127
VERSION = 1


class Peaks:
    """The min and max of a stem in `points` spans, gathered block by block in
    order (the blocks' frames follow one another from frame 0)."""

    def __init__(self, frames: int, points: int = POINTS) -> None:
        self.frames = frames
        self.span = max(1, math.ceil(frames / points))
        self.points = math.ceil(frames / self.span) if frames else 0
        self.low = np.full(self.points, np.inf, dtype=np.float32)
        self.high = np.full(self.points, -np.inf, dtype=np.float32)
        self.seen = 0  # frames added so far

    def add(self, block: np.ndarray) -> None:
        """One [channels, n] block, the n frames after those added before."""
        count = int(block.shape[-1])
        if count == 0:
            return
        if self.seen + count > self.frames:  # a resampler's last frame or two: clip
            count = self.frames - self.seen
            block = block[..., :count]
            if count <= 0:
                return
        low, high = block.min(axis=0), block.max(axis=0)
        first = self.seen // self.span
        # where each span begins inside this block (the block's own start first)
        edges = np.arange((first + 1) * self.span - self.seen, count, self.span)
        starts = np.concatenate(([0], edges)).astype(np.intp)
        where = np.arange(first, first + len(starts))
        self.low[where] = np.minimum(self.low[where], np.minimum.reduceat(low, starts))
        self.high[where] = np.maximum(self.high[where], np.maximum.reduceat(high, starts))
        self.seen += count

    def as_json(self) -> dict[str, list[int]]:
        def scaled(values: np.ndarray) -> list[int]:
            finite = np.where(np.isfinite(values), values, 0.0)  # spans never reached
            return [int(v) for v in np.clip(np.rint(finite * SCALE), -SCALE, SCALE)]

        return {"min": scaled(self.low), "max": scaled(self.high)}


def write_peaks(path: Path, samplerate: int, stems: dict[str, Peaks]) -> None:
    """The stems' pictures in one file (every stem has the same frames)."""
    first = next(iter(stems.values()), None)
    data: dict[str, Any] = {
        "version": VERSION,
        "samplerate": samplerate,
        "frames": first.frames if first else 0,
        "span": first.span if first else 1,
        "points": first.points if first else 0,
        "scale": SCALE,
        "stems": {stem: peaks.as_json() for stem, peaks in stems.items()},
    }
    with open(path, "w", encoding="utf-8") as out:
        json.dump(data, out, separators=(",", ":"))
        out.write("\n")
