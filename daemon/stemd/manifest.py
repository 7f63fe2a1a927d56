"""`stemd.json`, the manifest in every track folder, and the stem files it names.

A manifest lives on the share, where its group may write it (0664 with the README's
group advice): what it says is not to be trusted as a path. A name it gives for a
stem is used only when it is a plain file name of the track's own folder (no
separator, no `..`, not hidden) and that file a regular file, not a link; the
manifest itself is read without following a link; the files are opened without
following one either, so a name swapped for a link after the check is refused too.
A manifest that fails any of this is foreign: nothing it names is read, served or
copied.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

MANIFEST = "stemd.json"
# O_NONBLOCK: a FIFO planted on the share under a stem's or the manifest's name
# must not hold the reader (an HTTP thread) for ever; regular files ignore it
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def new_manifest(**fields: Any) -> dict[str, Any]:
    fields.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return fields


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest as a dict; None when it is missing, not JSON, or a link."""
    try:
        fd = os.open(folder / MANIFEST, OPEN_FLAGS)
    except OSError:
        return None
    try:
        with os.fdopen(fd, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def plain_name(name: object) -> bool:
    """A file name that stays in its folder: no separator, NUL, `..` or leading dot."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not name.startswith(".")
        and not any(ch in name for ch in "/\\\0")
    )


def inside(folder: Path, root: Path) -> bool:
    """`folder` resolves (links followed) to a place below `root`'s own resolution."""
    real, top = os.path.realpath(folder), os.path.realpath(root)
    return real.startswith(top.rstrip(os.sep) + os.sep)


def manifest_stems(folder: Path, root: Path) -> dict[str, Path] | None:
    """stem -> file, as the manifest of `folder` (below `root`, the outbox) names
    them, when it can be trusted; None when it is missing or foreign."""
    return trusted_stems(folder, root, read_manifest(folder))


def trusted_stems(
    folder: Path, root: Path, manifest: dict[str, Any] | None
) -> dict[str, Path] | None:
    """manifest_stems for a manifest of `folder` already read (read_manifest)."""
    if manifest is None or not inside(folder, root):
        return None
    stems = manifest.get("stems")
    if not isinstance(stems, dict) or not stems:
        return None
    files: dict[str, Path] = {}
    for stem, name in stems.items():
        if not (plain_name(stem) and plain_name(name)):
            return None
        path = folder / name
        try:
            info = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        files[stem] = path
    return files


def manifest_peaks(folder: Path, root: Path) -> Path | None:
    """The waveform file (`peaks.json`, stemd.audio.peaks) the manifest of
    `folder` names, when the manifest can be trusted (manifest_stems) and the
    name is a plain file of the folder; None otherwise, as for stems made before
    stemd wrote one. Open it with open_stem, as a stem."""
    manifest = read_manifest(folder)
    stems = trusted_stems(folder, root, manifest)
    if stems is None or manifest is None:
        return None
    name = manifest.get("peaks")
    if not (isinstance(name, str) and plain_name(name)):
        return None
    if name in {path.name for path in stems.values()}:
        return None  # a stem's own file named as the peaks: foreign
    path = folder / name
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return path if stat.S_ISREG(info.st_mode) else None  # no link, FIFO or folder


def open_stem(path: Path, root: Path) -> int:
    """A read-only descriptor of a stem file below `root` (the outbox): OSError if
    `path` is a link, not a regular file, or the file opened lies outside `root`
    (a folder on the way swapped for a link since the manifest was checked: only
    the last part of a path is kept from following one by O_NOFOLLOW, so where the
    opened file really is is asked of the descriptor itself)."""
    fd = os.open(path, OPEN_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        if not inside(Path(os.readlink(f"/proc/self/fd/{fd}")), root):
            raise OSError(f"{path} lies outside {root}")
    except BaseException:
        os.close(fd)
        raise
    return fd
