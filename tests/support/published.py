"""Reading the outbox as its users do: a track is published once its
`stemd.json` is visible (stemd renames the whole folder into place)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "stemd.json"
TEMP_DIR = ".stemd-tmp"  # stemd's work in progress inside the outbox


def manifest_in(folder: Path) -> dict[str, Any] | None:
    """The manifest of the track published at `folder`, or None if there is none."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def published(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def manifests_under(model_dir: Path, pattern: str = "*") -> dict[str, dict[str, Any]]:
    """{track folder name: manifest} for every published folder matching `pattern`
    below one model's outbox folder."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(model_dir.glob(f"{pattern}/{MANIFEST}")):
        found[path.parent.name] = json.loads(path.read_text())
    return found


def published_manifests(outbox: Path) -> list[dict[str, Any]]:
    """Every published track's manifest anywhere in the outbox. Work in progress
    (`.stemd-tmp/`, created and removed while we look) is not published: it is
    skipped, and a folder that vanishes mid-walk is passed over, not an error."""
    found = []
    for folder, subfolders, files in os.walk(outbox):
        subfolders[:] = [name for name in subfolders if name != TEMP_DIR]
        if MANIFEST in files:
            data = manifest_in(Path(folder))
            if data is not None:
                found.append(data)
    return found
