"""The daemon's HTTP server as a client sees it: its URL from the log, a client,
and what its spool and sockets hold."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx

from support.daemon import Daemon
from support.waiting import wait_until

LISTENING = re.compile(r"http: listening on (http://\S+)")
# A test config's http section: a free port, chosen by the kernel, logged by stemd
EPHEMERAL = {"listen": "127.0.0.1:0"}


def http_url(daemon: Daemon, timeout: float = 60) -> str:
    """The URL the daemon logged once its server listens."""

    def logged() -> str | None:
        assert daemon.process is not None
        if daemon.process.poll() is not None:
            raise AssertionError(f"stemd exited early:\n{daemon.log()}")
        match = LISTENING.search(daemon.log())
        return match.group(1) if match else None

    return wait_until(logged, timeout, "the HTTP server to listen")


def client(url: str, token: str | None = None, timeout: float = 60) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=timeout)


def spool_files(root: Path) -> list[str]:
    """What is left in the daemon's upload spool (state/uploads)."""
    spool = root / "state" / "uploads"
    return sorted(p.name for p in spool.iterdir()) if spool.is_dir() else []


def listening_ports(pid: int) -> list[int]:
    """TCP ports the process listens on: its socket inodes matched against the
    kernel's tables (no tool needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
