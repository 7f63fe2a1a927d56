"""Watches an outbox while the daemon runs and decodes every stem file it sees.

Readers of the outbox must never see a partial stem: any audio file outside the
hidden temporary folders must decode to the full track, the moment it appears.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from support.audio import read_audio

TEMP_DIR = ".stemd-tmp"
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3")


class OutboxWatch:
    def __init__(self, outbox: Path, seconds: float, tolerance: float = 0.06) -> None:
        self.outbox = outbox
        self.seconds = seconds
        self.tolerance = tolerance
        self.checked: set[tuple[str, int]] = set()  # (path, inode) decoded and found whole
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-watch", daemon=True)

    def __enter__(self) -> OutboxWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._scan()  # a last look at what is there now

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._scan()

    def _scan(self) -> None:
        for folder, dirs, files in os.walk(self.outbox):
            dirs[:] = [d for d in dirs if d != TEMP_DIR]
            for name in files:
                if name.endswith(AUDIO_SUFFIXES):
                    self._check(Path(folder) / name)

    def _check(self, path: Path) -> None:
        try:
            key = (str(path), path.stat().st_ino)
        except FileNotFoundError:
            return
        if key in self.checked:
            return
        try:
            data, rate = read_audio(path)
        except Exception as err:  # any failure to decode is what we are looking for
            self.problems.append(f"{path}: does not decode: {err}")
            return
        duration = data.shape[-1] / rate
        if abs(duration - self.seconds) > self.tolerance:
            self.problems.append(f"{path}: {duration:.3f}s, expected {self.seconds}s")
        self.checked.add(key)
