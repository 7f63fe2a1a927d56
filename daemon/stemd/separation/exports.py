"""Exported networks kept in state_dir, so a restart loads them in seconds.

One folder per export, named by a hash of what it was made from (the runtime and
its version, the model's class and weights, the chunk length, the batch size):
a new model, runtime or setting makes a new folder, and nothing stale is loaded.
`export.json` lists every file of the export with its SHA-256; a file that does
not match (a disk error, a crash in the middle of a copy, a hand edit) makes the
export unusable, and it is built again. A folder is built under a temporary name
and renamed into place, so a half-written export is never found; a lock file
keeps two workers from building the same one at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stemd.hashing import sha256_file

log = logging.getLogger("stemd")

MANIFEST = "export.json"
# how long a worker waits for another to finish building the same export
LOCK_WAIT_SECONDS = 1800.0
LOCK_POLL_SECONDS = 0.5


class ExportLockTimeout(Exception):
    """Another process held an export's lock for longer than LOCK_WAIT_SECONDS."""


@dataclass(frozen=True)
class ExportKey:
    """What an export is made from: change any of it and it is another export."""

    runtime: str  # "openvino"
    runtime_version: str
    model_class: str
    weights: str  # the model's weights fingerprint
    length: int  # samples per chunk
    batch: int  # chunks per pass
    # what turned the model into the export (torch, its exporter's opset, demucs,
    # stemd's cut of the graph): an upgrade of any of them makes it again
    toolchain: str = ""

    def folder_name(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return f"{self.runtime}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class Export:
    """An export on disk whose files matched their hashes when it was found."""

    folder: Path
    manifest: dict[str, Any]

    def path(self, name: str) -> Path:
        return self.folder / name

    @property
    def export_seconds(self) -> float:
        value = self.manifest.get("export_seconds", 0.0)
        return float(value) if isinstance(value, (int, float)) else 0.0


# builds an export's files into the folder it is given; returns their names
Builder = Callable[[Path], list[str]]


class ExportStore:
    """The exports under one folder (state_dir/exports)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, key: ExportKey) -> Path:
        return self.root / key.folder_name()

    def find(
        self, key: ExportKey, expected: tuple[str, ...] | None = None
    ) -> tuple[Export | None, str | None]:
        """The export for `key` if it is there and whole (and, given `expected`,
        made of exactly those files); else (None, why not), with why None when
        there simply is none."""
        folder = self.folder(key)
        manifest_path = folder / MANIFEST
        if not folder.exists():
            return None, None
        try:
            manifest = json.loads(manifest_path.read_text())
            files: dict[str, str] = manifest["files"]
            if manifest.get("key") != asdict(key):
                return None, f"{manifest_path} was made from something else"
            if not isinstance(files, dict) or not files:
                # an edit that left it JSON: nothing would be checked
                return None, f"{manifest_path} lists no files"
            if any(Path(name).name != name or name in ("", ".", "..") for name in files):
                return None, f"{manifest_path} names files outside its folder"
            if expected is not None and set(files) != set(expected):
                return None, f"{manifest_path} lists {sorted(files)}, not {sorted(expected)}"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, f"{manifest_path} cannot be read ({exc})"
        for name, digest in files.items():
            path = folder / name
            try:
                actual = sha256_file(path)
            except OSError as exc:
                return None, f"{path} cannot be read ({exc.strerror or exc})"
            if actual != digest:
                return None, f"{path} does not match its SHA-256 in {MANIFEST} (damaged)"
        return Export(folder, manifest), None

    def build(self, key: ExportKey, builder: Builder) -> Export:
        """Build the export for `key` (replacing a damaged one) and return it."""
        self.root.mkdir(parents=True, exist_ok=True)
        folder = self.folder(key)
        # builds run under the key's lock: any folder a build left is a dead one's
        for stale in self.root.glob(f"{folder.name}.building-*"):
            shutil.rmtree(stale, ignore_errors=True)
        building = folder.with_name(f"{folder.name}.building-{os.getpid()}")
        building.mkdir()
        try:
            started = time.monotonic()
            names = builder(building)
            manifest = {
                "key": asdict(key),
                "files": {name: sha256_file(building / name) for name in names},
                "export_seconds": round(time.monotonic() - started, 2),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (building / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if folder.exists():
                shutil.rmtree(folder)
            building.rename(folder)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        return Export(folder, manifest)

    @contextlib.contextmanager
    def locked(
        self,
        key: ExportKey,
        timeout: float = LOCK_WAIT_SECONDS,
        on_wait: Callable[[], None] | None = None,
    ) -> Iterator[None]:
        """Held while one process finds, builds and measures `key`'s export.
        `on_wait` is called at every poll while another holds it (a worker's
        heartbeat: the wait may be minutes)."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.root / f".{key.folder_name()}.lock"
        with lock_path.open("a") as lock:
            deadline = time.monotonic() + timeout
            told = False
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told:
                        log.info("waiting for another process making the export (%s)", lock_path)
                        told = True
                    if on_wait is not None:
                        on_wait()
                    if time.monotonic() > deadline:
                        raise ExportLockTimeout(
                            f"{lock_path} was held for over {timeout:.0f}s by another process"
                        ) from None
                    time.sleep(LOCK_POLL_SECONDS)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def remember(self, export: Export, name: str, record: dict[str, Any]) -> None:
        """Keep a small record beside an export (auto's choice and its times)."""
        path = export.folder / name
        temporary = path.with_name(f".{name}.{os.getpid()}")
        temporary.write_text(json.dumps(record, indent=2) + "\n")
        temporary.replace(path)

    def recall(self, export: Export, name: str) -> dict[str, Any] | None:
        try:
            record = json.loads((export.folder / name).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None
