"""Work files: a job's decoded mix and its stems as raw float32 on local disk.

A separation never holds a whole track in memory. The input is decoded into a
raw work file at the model's rate and channels, the model reads it a window at a
time, and each stem is written to a work file of its own, from which the
encoders read it in blocks. The files live in the job's private folder under
`state_dir/work/` (local disk, never the outbox share), are removed when the job
ends however it ends, and whatever a crash left there is removed at startup.

Files hold interleaved frames (sample 0 of every channel, then sample 1, ...),
little-endian float32, no header: a time range is one contiguous read. They are
read and written with pread/write in windows, never memory-mapped whole: mapped
pages count in a process's resident memory, the figure users see in `top`.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stemd.errors import StemdError, WorkAreaFull

log = logging.getLogger("stemd")

WORK_DIR = "work"
SAMPLE_BYTES = 4  # float32
SPACE_MARGIN_BYTES = 16 << 20  # left free on the disk beyond what the work files take


def _size(count: int) -> str:
    value = float(max(0, count))
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


PEAK_BLOCK_FRAMES = 1 << 18  # a few seconds of audio a read, when a sum's peak is sought


class RawAudio:
    """One work file of float32 frames: appended to in blocks, read in windows."""

    def __init__(self, path: Path, channels: int, create: bool = True) -> None:
        self.path = path
        self.channels = channels
        # unbuffered: what is written is at once visible to pread
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        self._fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        self.frames = os.fstat(self._fd).st_size // (channels * SAMPLE_BYTES)
        self.peak = 0.0  # the largest absolute sample appended

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RawAudio:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def append(self, block: np.ndarray) -> None:
        """Add [channels, n] samples at the end."""
        if block.shape[0] != self.channels:
            raise ValueError(f"{self.path}: {block.shape[0]} channels, not {self.channels}")
        if block.shape[-1] == 0:
            return
        data = np.ascontiguousarray(block.T, dtype="<f4")
        self.peak = max(self.peak, float(data.max()), -float(data.min()))  # no |x| copy
        view = memoryview(data.data).cast("B")
        offset = self.frames * self.channels * SAMPLE_BYTES
        try:
            while view:  # pwrite may write less than asked (signals, large writes)
                written = os.pwrite(self._fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise WorkAreaFull(
                    f"the work area {self.path.parent} filled up while writing {self.path.name}; "
                    "free space there or set state_dir to a larger local disk"
                ) from err
            raise
        self.frames += block.shape[-1]

    def read(self, start: int, count: int) -> np.ndarray:
        """[channels, count] float32 from frame `start`; zeros outside the file."""
        out = np.zeros((count, self.channels), dtype="<f4")
        lo, hi = max(0, start), min(self.frames, start + count)
        if hi > lo:
            size = (hi - lo) * self.channels * SAMPLE_BYTES
            data = os.pread(self._fd, size, lo * self.channels * SAMPLE_BYTES)
            while len(data) < size:  # a short read: ask for the rest
                more = os.pread(self._fd, size - len(data), lo * self.channels * 4 + len(data))
                if not more:
                    raise StemdError(f"{self.path}: the work file ended early")
                data += more
            out[lo - start : hi - start] = np.frombuffer(data, dtype="<f4").reshape(
                -1, self.channels
            )
        return out.T


class SumOfStems:
    """The sample-wise sum of work files, read in windows as one stem: `no_STEM`
    (two_stems) from the model's other stems, in their order and in float32, as
    demucs adds them. Its peak (the clip rule needs it before the first block is
    written) is found by one pass over the files, when first asked."""

    def __init__(self, parts: list[RawAudio]) -> None:
        if not parts:
            raise ValueError("a sum of no stems")
        self.parts = parts
        self.channels = parts[0].channels
        self.frames = max(part.frames for part in parts)
        self._peak: float | None = None

    def read(self, start: int, count: int) -> np.ndarray:
        total = np.zeros((self.channels, count), dtype="<f4")
        for part in self.parts:
            total += part.read(start, count)
        return total

    @property
    def peak(self) -> float:
        if self._peak is None:
            peak = 0.0
            for start in range(0, self.frames, PEAK_BLOCK_FRAMES):
                block = self.read(start, min(PEAK_BLOCK_FRAMES, self.frames - start))
                peak = max(peak, float(block.max()), -float(block.min()))
            self._peak = peak
        return self._peak


@dataclass(frozen=True)
class MixStats:
    """Mean and std of the mono reference (the channels' mean), as demucs
    normalises a mix: `ref.mean()`, `ref.std()` (unbiased) + 1e-8 in its caller."""

    mean: float
    std: float


class RunningStats:
    """MixStats over blocks, in float64 (Chan et al.'s pairwise update)."""

    def __init__(self) -> None:
        self.count = 0
        self._mean = 0.0
        self._m2 = 0.0

    def add(self, block: np.ndarray) -> None:
        """Add [channels, n] samples."""
        if block.shape[-1] == 0:
            return
        ref = block.astype(np.float64).mean(axis=0)
        n = ref.shape[0]
        mean = float(ref.mean())
        m2 = float(((ref - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self._mean
        self._mean += delta * n / total
        self._m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    def result(self) -> MixStats:
        variance = self._m2 / (self.count - 1) if self.count > 1 else math.nan
        return MixStats(self._mean, math.sqrt(variance) if variance == variance else math.nan)


class MixWriter:
    """Where a decoder's blocks go: the mix's work file, and its statistics."""

    def __init__(self, path: Path, channels: int) -> None:
        self.path = path
        self.channels = channels
        self.raw = RawAudio(path, channels)
        self.stats = RunningStats()

    def write(self, block: np.ndarray) -> None:
        self.raw.append(block)
        self.stats.add(block)

    def reset(self) -> None:
        self.raw.close()
        self.raw = RawAudio(self.path, self.channels)  # truncated
        self.stats = RunningStats()

    def close(self) -> None:
        self.raw.close()


class JobWork:
    """One job's private folder of work files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def mix_path(self) -> Path:
        return self.folder / "mix.f32"

    def stem_path(self, stem: str) -> Path:
        return self.folder / f"stem-{stem}.f32"

    def check_space(self, frames: int, channels: int, files: int) -> None:
        """WorkAreaFull unless `files` work files of `frames` frames fit, beside
        what is already written here."""
        needed = frames * channels * SAMPLE_BYTES * files + SPACE_MARGIN_BYTES
        free = shutil.disk_usage(self.folder).free
        if free < needed:
            raise WorkAreaFull(
                f"the work area {self.folder.parent} is short of {_size(needed - free)} for "
                f"this track's work files ({_size(needed)} needed, {_size(free)} free); "
                "free space there or set state_dir to a larger local disk"
            )

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class WorkArea:
    """`state_dir/work/`: one folder per job in hand."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / WORK_DIR

    def job(self, label: str) -> JobWork:
        """A fresh, empty folder for a job (anything there before is gone)."""
        folder = self.root / label
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, mode=0o700)
        return JobWork(folder)

    def clear(self) -> int:
        """Remove every job folder: at startup, what is there was left by a crash.
        Returns how many bytes were freed."""
        if not self.root.is_dir():
            return 0
        freed = 0
        for entry in self.root.iterdir():
            freed += _tree_size(entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        return freed


def _tree_size(path: Path) -> int:
    try:
        if path.is_file() or path.is_symlink():
            return path.lstat().st_size
        return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return 0
