"""Long stems without a long separation: synthetic audio through stemd's own
streaming encoder (stemd.audio.encode_stem, block by block, peaks taken on the
way, peaks.json written as track.write_stems writes it). A 20-minute track
through the test model takes about a minute of these two cores; this takes
seconds, and gives the page the same files a separation would."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stemd.audio import PEAKS, Peaks, StemFormat, encode_stem, write_peaks


class Synthetic:
    """A StemReader of a tone whose loudness swells and fades (so its picture
    has a shape), made a block at a time: nothing whole in memory."""

    channels = 2

    def __init__(self, seconds: float, rate: int, frequency: float, swell_s: float) -> None:
        self.rate = rate
        self.frames = int(seconds * rate)
        self.frequency = frequency
        self.swell_s = swell_s
        self.peak = 0.8

    def read(self, start: int, count: int) -> np.ndarray:
        t = (start + np.arange(count)) / self.rate
        loudness = 0.5 + 0.5 * np.sin(2 * np.pi * t / self.swell_s)
        mono = (self.peak * loudness * np.sin(2 * np.pi * self.frequency * t)).astype(np.float32)
        return np.stack([mono, mono])


def write_long_stems(folder: Path, files: dict[str, str], seconds: float, rate: int) -> None:
    """Each stem (stem -> file name in `folder`) written anew as a `seconds`-long
    16-bit WAV at `rate`, and the folder's peaks.json with them."""
    fmt = StemFormat("wav", "s16", 320, "rescale")
    peaks: dict[str, Peaks] = {}
    for n, (stem, name) in enumerate(sorted(files.items())):
        reader = Synthetic(seconds, rate, 220.0 * (n + 1), swell_s=60.0 + 45.0 * n)
        peaks[stem] = encode_stem(reader, folder / name, rate, fmt)
    write_peaks(folder / PEAKS, rate, peaks)
