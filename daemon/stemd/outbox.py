"""Where stems land, and how they get there without a reader ever seeing half.

A track's stems are written into a hidden temporary folder inside the outbox
(`.stemd-tmp/`, same filesystem), fsynced, then the folder is renamed into its
final place and the parent fsynced. Each track folder holds `stemd.json`, whose
sha256 and profile tell whether an existing folder is ours: a restart after a
crash between the rename and the ledger commit recognises its own work instead
of publishing it twice.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import logging
import os
import re
import shutil
import stat
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from stemd.config import OutputConfig
from stemd.errors import ConfigError, NameTaken, NoSpace, OutboxError, OutboxFull
from stemd.ledger import FileStat
from stemd.manifest import MANIFEST, open_stem, read_manifest, trusted_stems

log = logging.getLogger("stemd")

TEMP_DIR = ".stemd-tmp"
MAX_NAME_BYTES = 255
# FLAC of separated stems seldom saves less than this against PCM (noise-like
# stems save least); the check only has to spot a job that cannot fit.
FLAC_TO_PCM_RATIO = 0.7
SPACE_MARGIN_BYTES = 1 << 20  # the manifest, folder entries, filesystem rounding


def stems_size_estimate(
    output: OutputConfig, seconds: float, samplerate: int, channels: int, stems: int
) -> int:
    """About how many bytes a track's stems take in the outbox."""
    if output.format == "mp3":
        per_stem = seconds * output.mp3_bitrate * 1000 / 8
    else:
        width = {"s16": 2, "s24": 3, "f32": 4}[output.sample_format]
        per_stem = seconds * samplerate * channels * width
        if output.format == "flac":
            per_stem *= FLAC_TO_PCM_RATIO
    return int(per_stem * stems) + SPACE_MARGIN_BYTES


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC or EDQUOT anywhere in the error's chain (encoders wrap OSErrors)."""
    current: BaseException | None = err
    while current is not None:
        if isinstance(current, NoSpace):
            return True
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(current) or "Disk quota exceeded" in str(current):
            return True  # ffmpeg's message, from an encoder subprocess
        current = current.__cause__ or current.__context__
    return False


def safe_component(name: str) -> str:
    """One path component that is safe on every share: no slash, NUL or control
    characters, not '.'/'..', at most 255 bytes of UTF-8."""
    cleaned = "".join("_" if (ch in "/\\\0" or not ch.isprintable()) else ch for ch in name)
    cleaned = cleaned.strip()
    if cleaned in ("", ".", ".."):
        cleaned = "_"
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]  # a hidden track folder would look like our temp
    encoded = cleaned.encode("utf-8", errors="surrogateescape")
    if len(encoded) > MAX_NAME_BYTES:
        cleaned = encoded[:MAX_NAME_BYTES].decode("utf-8", errors="ignore")
    return cleaned


@dataclass(frozen=True)
class TrackNames:
    """The values of the layout placeholders for one input."""

    model: str
    relative_dir: str  # the input's folder relative to the inbox, "" at its top
    track: str  # file name without extension
    trackext: str
    hash: str  # first 12 hex digits of the sha256

    @classmethod
    def for_input(cls, model_folder: str, relative: str, sha256: str) -> TrackNames:
        path = PurePosixPath(relative)
        name = path.name
        track, _, ext = name.rpartition(".")
        if not track:  # no dot: the whole name is the track
            track, ext = name, ""
        parent = path.parent.as_posix()
        return cls(
            model=model_folder,
            relative_dir="" if parent == "." else parent,
            track=track,
            trackext=ext,
            hash=sha256[:12],
        )


# An empty {relative_dir} (a file at the inbox's top) takes one separator beside it
# along: `{relative_dir}_{track}` gives `song`, not `_song`.
EMPTY_RELATIVE_DIR = re.compile(r"\{relative_dir\}[_\- ]|[_\- ]?\{relative_dir\}")


def _without_empty_relative_dir(template: str, names: TrackNames) -> str:
    return EMPTY_RELATIVE_DIR.sub("", template) if not names.relative_dir else template


def _format_parts(template: str, values: dict[str, str]) -> list[str]:
    """Format a layout fragment and split it into safe path components."""
    parts: list[str] = []
    for raw in template.split("/"):
        formatted = raw.format(**values)
        # {relative_dir} may span several folders; each is cleaned on its own.
        for piece in formatted.split("/"):
            if piece:
                parts.append(safe_component(piece))
    return parts


def track_folder(layout: str, names: TrackNames) -> PurePosixPath:
    """The track's folder relative to the outbox, e.g. htdemucs/rock/song."""
    folder = _without_empty_relative_dir(layout.rsplit("/", 1)[0], names)
    values = {
        "model": names.model,
        "relative_dir": names.relative_dir,
        "track": names.track,
        "trackext": names.trackext,
        "hash": names.hash,
    }
    parts = _format_parts(folder, values)
    if not parts:
        raise OutboxError(f"the layout {layout!r} gives an empty track folder")
    return PurePosixPath(*parts)


def stem_filename(layout: str, names: TrackNames, stem: str, ext: str) -> str:
    template = _without_empty_relative_dir(layout.rsplit("/", 1)[-1], names)
    values = {
        "model": names.model,
        "relative_dir": names.relative_dir.replace("/", "_"),
        "track": names.track,
        "trackext": names.trackext,
        "hash": names.hash,
        "stem": stem,
        "ext": ext,
    }
    return safe_component(template.format(**values))


def numbered(folder: PurePosixPath, n: int) -> PurePosixPath:
    """`song` -> `song (2)`: the name for the n-th different track called the same."""
    return folder.with_name(safe_component(f"{folder.name} ({n})"))


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Outbox:
    """Publishes finished track folders into the outbox root."""

    def __init__(self, root: Path, output: OutputConfig, owner: str = "") -> None:
        """`owner`: this daemon's node id, the first part of its temp folders'
        names: daemons sharing an outbox clear only their own leftovers."""
        self.root = root
        self.output = output
        self.owner = owner
        self.gid: int | None = None
        if output.group is not None:
            try:
                self.gid = grp.getgrnam(output.group).gr_gid
            except KeyError:
                raise ConfigError.single(
                    "config", "output.group", f"no group named {output.group!r} on this system"
                ) from None

    @property
    def temp_root(self) -> Path:
        return self.root / TEMP_DIR

    def cleanup_temp(self, live_others: Collection[str] = ()) -> int:
        """Remove work folders left by an interrupted run: all but those of
        the other daemons still running on this outbox (`live_others`, node
        ids). Returns how many."""
        if not self.temp_root.is_dir():
            return 0
        count = 0
        for entry in self.temp_root.iterdir():
            owner = entry.name.split(".", 1)[0] if "." in entry.name else ""
            if owner and owner in live_others:
                continue  # another host's work in progress
            shutil.rmtree(entry, ignore_errors=True)
            count += 1
        self.tidy_temp()
        return count

    def check_space(self, needed: int, what: str) -> None:
        """Raise OutboxFull unless the outbox has `needed` bytes free."""
        try:
            free = shutil.disk_usage(self.root).free  # what this user may use
        except OSError:
            return  # a missing outbox is the folder check's business
        if free < needed:
            raise OutboxFull(
                f"the outbox {self.root} is full: {free / 1e6:.1f} MB free, about "
                f"{needed / 1e6:.1f} MB needed for {what}; free some space (the job waits)"
            )

    def new_temp(self, label: str) -> Path:
        prefix = f"{self.owner}." if self.owner else ""
        folder = self.temp_root / f"{prefix}{label}-{uuid.uuid4().hex[:8]}"
        for _attempt in range(3):
            # Never parents=True: a missing outbox may be an unmounted share, and
            # recreating it would put stems on the disk beneath the mount point.
            try:
                self.temp_root.mkdir(exist_ok=True)
                folder.mkdir()
                return folder
            except (FileNotFoundError, FileExistsError):
                # another process (a host sharing the outbox) tidied the empty
                # temp root away just now: between our mkdir and its check, or
                # between it and the folder's
                continue
        folder.mkdir()  # a third miss: let its error speak
        return folder

    def discard(self, temp: Path) -> None:
        shutil.rmtree(temp, ignore_errors=True)
        self.tidy_temp()

    def tidy_temp(self) -> None:
        """Remove the temp root once nothing is in it: users browse the outbox
        (and `./separated`), where an empty `.stemd-tmp/` is litter."""
        with contextlib.suppress(OSError):  # not empty (other work in it), or gone
            self.temp_root.rmdir()

    # -- permissions --------------------------------------------------------

    def _apply_mode(self, path: Path, is_dir: bool) -> None:
        mode = self.output.dir_mode if is_dir else self.output.file_mode
        try:
            os.chmod(path, mode)
            if self.gid is not None:
                os.chown(path, -1, self.gid)
        except OSError as err:
            log.warning("cannot set mode/group on %s: %s", path, err.strerror)

    def _make_parents(self, folder: Path) -> None:
        missing: list[Path] = []
        current = folder
        while not current.exists() and current != self.root:
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                path.mkdir()
            self._apply_mode(path, is_dir=True)

    # -- writing ------------------------------------------------------------

    def seal(self, temp: Path, manifest: dict[str, Any]) -> None:
        """Write the manifest, set modes, and fsync every file and the folder."""
        with open(temp / MANIFEST, "w", encoding="utf-8") as file:
            json.dump(manifest, file, indent=2, ensure_ascii=False)
            file.write("\n")
        for entry in temp.iterdir():
            self._apply_mode(entry, is_dir=False)
            fsync_path(entry)
        self._apply_mode(temp, is_dir=True)
        fsync_path(temp)

    def owns(self, folder: Path, sha256: str, profile: str) -> bool:
        """The folder holds this content's stems under this profile: its manifest
        says so, and can be trusted (manifest_stems): a tampered or planted one is
        another track's folder, never adopted."""
        manifest = read_manifest(folder)
        return (
            manifest is not None
            and manifest.get("sha256") == sha256
            and manifest.get("profile") == profile
            and trusted_stems(folder, self.root, manifest) is not None
        )

    def _target(
        self, folder: PurePosixPath, sha256: str, profile: str
    ) -> tuple[PurePosixPath | None, str]:
        """Where this track's stems go under the conflict policy, and what is there:
        "free", "ours" (this very content and profile: publishing is a no-op) or
        "other" (to overwrite). None for skip."""
        candidate, n = folder, 1
        while True:
            path = self.root / candidate
            if not path.exists():
                return candidate, "free"
            if self.owns(path, sha256, profile):
                return candidate, "ours"
            policy = self.output.on_conflict
            if policy == "skip":
                return None, "other"
            if policy == "overwrite":
                return candidate, "other"
            n += 1
            candidate = numbered(folder, n)

    def find_ours(self, folder: PurePosixPath, sha256: str, profile: str) -> PurePosixPath | None:
        """Where stems of this content and profile were already published for
        `folder` (itself or a numbered sibling), or None."""
        target, occupant = self._target(folder, sha256, profile)
        return target if occupant == "ours" else None

    def would_skip(self, folder: PurePosixPath, sha256: str, profile: str) -> bool:
        """Whether publishing this track's stems at `folder` would write nothing
        (on_conflict: skip, the name taken by other stems): known before separating."""
        target, _occupant = self._target(folder, sha256, profile)
        return target is None

    def publish(
        self, temp: Path, folder: PurePosixPath, sha256: str, profile: str
    ) -> PurePosixPath | None:
        """Move a sealed temp folder into place. Returns its outbox-relative path,
        or None when on_conflict is skip and the name is taken."""
        target, occupant = self._target(folder, sha256, profile)
        if target is None or occupant == "ours":
            self.discard(temp)  # skipped, or published before a crash the ledger missed
            return target
        final = self.root / target
        self._make_parents(final.parent)
        if occupant == "other":  # overwrite: swap, then remove the old folder
            trash = self.new_temp("replaced")
            os.rename(final, trash / "old")
            os.rename(temp, final)
            self.discard(trash)
        else:
            try:
                os.rename(temp, final)
            except OSError as err:
                if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise NameTaken(f"{final}: appeared while publishing; will retry") from err
                raise OutboxError(f"{final}: cannot publish: {err.strerror}") from err
        fsync_path(final.parent)
        self.tidy_temp()
        return target

    @staticmethod
    def _link_same(source: Path, dest: Path, checked: os.stat_result) -> bool:
        """Hard-link `source` to `dest` if that links the file `checked` describes;
        False (nothing left at `dest`) where links cannot be made, or it is not."""
        try:
            os.link(source, dest, follow_symlinks=False)
        except OSError as err:
            if err.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                return False
            raise
        made = os.lstat(dest)
        if (made.st_dev, made.st_ino) == (checked.st_dev, checked.st_ino):
            return True
        dest.unlink()  # swapped between the check and the link: not that file
        return False

    def copy_stems(self, original: Path, temp: Path, names: Mapping[str, str], link: bool) -> None:
        """Reuse stems (file in `original` -> name in `temp`): hard links where the
        filesystem allows, else copies."""
        for name, new_name in names.items():
            source, dest = original / name, temp / new_name
            # the file itself, opened once and checked to lie in the outbox; a link is
            # kept only if it is of that very file (not of whatever the name points
            # at by the time link() looks it up), else a copy is made of that file
            with os.fdopen(open_stem(source, self.root), "rb") as reader:
                if link and self._link_same(source, dest, os.fstat(reader.fileno())):
                    continue
                with open(dest, "wb") as writer:
                    shutil.copyfileobj(reader, writer, 1 << 20)


def dispose_source(
    path: Path, relative: str, expected: FileStat, action: str, folder: Path | None
) -> str:
    """keep / move / delete an input, only if it is still the file we processed.

    Returns what was done, in words.
    """
    if action == "keep":
        return "kept"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "already gone"
    if not stat.S_ISREG(info.st_mode) or FileStat.of(info) != expected:
        return "left in place: it changed after it was processed"
    if action == "delete":
        path.unlink()
        return "deleted"
    assert folder is not None  # config validation requires it with move
    dest = folder / relative
    dest.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while dest.exists():
        n += 1
        stem, dot, ext = PurePosixPath(relative).name.rpartition(".")
        name = f"{stem} ({n}).{ext}" if dot else f"{ext} ({n})"
        dest = folder / PurePosixPath(relative).parent / name
    try:
        os.rename(path, dest)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        shutil.copy2(path, dest)
        path.unlink()
    return f"moved to {dest}"
