"""A daemon's own state_dir: the lock that keeps it to one daemon, and the node
id that names the daemon in a shared ledger."""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from pathlib import Path

from stemd.errors import StateError

LOCK_FILE = "stemd.lock"  # inside state_dir: held by the one daemon using it
NODE_FILE = "node"  # inside state_dir: this daemon's id in the ledger


class StateDirLock:
    """One daemon per state_dir: an flock on state_dir/stemd.lock, held until exit.

    SQLite alone would let two daemons share the ledger and claim each other's
    jobs. The kernel drops an flock when its holder dies, so a crash never
    leaves a stale lock behind. `stemd status` and `stemd retry` do not take it.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise StateError(
                f"state_dir {state_dir} is not writable ({err.strerror}): stemd keeps its "
                f"ledger there. Make it writable by uid {os.geteuid()} (the user stemd runs "
                "as), or set state_dir to a folder that is."
            ) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateError(f"{self.path}: cannot lock it ({err.strerror})") from None
            raise StateError(
                f"state_dir {state_dir} is in use by another stemd (pid {holder}). "
                "Stop that one first, or give this one its own state_dir."
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


def node_id(state_dir: Path) -> str:
    """This daemon's id, made once and kept in state_dir: the same across
    restarts (so it recovers its own jobs at once), different for every daemon
    (each has its own state_dir, on one host or several)."""
    path = state_dir / NODE_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    except OSError as err:
        raise StateError(f"{path}: cannot read this daemon's node id ({err.strerror})") from None
    if len(text) == 16 and all(c in "0123456789abcdef" for c in text):
        return text
    node = secrets.token_hex(8)
    try:
        temp = path.with_suffix(".tmp")
        temp.write_text(node + "\n")
        os.replace(temp, path)
    except OSError as err:
        raise StateError(f"{path}: cannot record this daemon's node id ({err.strerror})") from None
    return node
