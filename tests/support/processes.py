"""Child processes of a daemon under test, and a real ffmpeg made slow.

`slow_ffmpeg` puts a shim first on the daemon's PATH that runs the real ffmpeg
with `-re` (read the input at its own pace): decoding or encoding N seconds of
audio then takes N seconds, long enough to be seen in the act.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def slow_ffmpeg(folder: Path) -> dict[str, str]:
    real = shutil.which("ffmpeg")
    assert real is not None
    folder.mkdir()
    shim = folder / "ffmpeg"
    shim.write_text(f'#!/bin/sh\nexec {real} -re "$@"\n')
    shim.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def stat_fields(pid: int | str) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces and ")"):
    [0] is the state, [1] the parent pid, [11] and [12] user and system ticks."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def ffmpeg_children(parent: int, name: str) -> list[int]:
    """Pids of ffmpeg processes of `parent` whose command line names `name`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = stat_fields(entry.name)
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            int(fields[1]) == parent
            and cmdline[0].endswith(b"ffmpeg")
            and any(name.encode() in arg for arg in cmdline)
        ):
            found.append(int(entry.name))
    return found
