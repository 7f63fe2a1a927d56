"""Watches an outbox while the daemon runs and checks everything a reader can see.

Readers of the outbox must never see a partial track: at every look, each
visible track folder (any folder outside the hidden temporary ones that holds a
stem or a `stemd.json`) must hold its manifest and every stem, and each stem
must decode to the full track the moment it appears.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Collection, Mapping
from pathlib import Path

from support.audio import read_audio
from support.published import MANIFEST, TEMP_DIR

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3")
STEMS = ("bass", "drums", "other", "vocals")


class OutboxWatch:
    """`seconds`: every track's length, or {track folder name: length}."""

    def __init__(
        self,
        outbox: Path,
        seconds: float | Mapping[str, float],
        tolerance: float = 0.06,
        stems: Collection[str] = STEMS,
    ) -> None:
        self.outbox = outbox
        self.seconds = seconds
        self.tolerance = tolerance
        self.stems = set(stems)
        self.checked: set[tuple[str, int]] = set()  # (path, inode) decoded and found whole
        self.folders: set[str] = set()  # track folders seen whole, outbox-relative
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
            audio = [name for name in files if name.endswith(AUDIO_SUFFIXES)]
            if audio or MANIFEST in files:
                self._check_folder(Path(folder), set(files), audio)

    def _check_folder(self, folder: Path, listed: set[str], audio: list[str]) -> None:
        """One listing of a track folder: complete, or a problem."""
        where = folder.relative_to(self.outbox).as_posix()
        if MANIFEST not in listed:
            self.problems.append(f"{where}: visible without {MANIFEST}: {sorted(listed)}")
            return
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return  # replaced since the listing (on_conflict: overwrite)
        except ValueError as err:
            self.problems.append(f"{where}/{MANIFEST}: not whole JSON: {err}")
            return
        stems: dict[str, str] = manifest.get("stems", {})
        if set(stems) != self.stems:
            self.problems.append(f"{where}: manifest names stems {sorted(stems)}")
        missing = sorted(name for name in stems.values() if name not in listed)
        if missing:
            self.problems.append(f"{where}: visible without {missing}: {sorted(listed)}")
        self.folders.add(where)
        for name in audio:
            self._check_stem(folder / name, folder.name)

    def _expected_seconds(self, track: str) -> float:
        if isinstance(self.seconds, Mapping):
            return self.seconds[track]
        return self.seconds

    def _check_stem(self, path: Path, track: str) -> None:
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
        expected = self._expected_seconds(track)
        if abs(duration - expected) > self.tolerance:
            self.problems.append(f"{path}: {duration:.3f}s, expected {expected}s")
        self.checked.add(key)
