"""A private PostgreSQL server for the tests: Debian's binaries, initdb into a
temp folder, listening only on a socket in it.

initdb refuses to run as root, so as root the server runs as the `postgres`
user (runuser); its folders are made and handed over first. Nothing else on
the machine is touched: stop() removes the folder.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

START_TIMEOUT_S = 60


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError(
            "PostgreSQL's server is not installed: scripts/install-system-deps.sh installs it "
            "(Debian's postgresql package)"
        )
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    def __init__(self, fsync: bool = False) -> None:
        """`fsync`: off for tests (nothing here must survive a power cut); on for
        benchmarks, where commits should cost what they cost in use."""
        self.fsync = fsync
        self.bin = _bin_dir()
        # not under pytest's tmp_path: that is 0700 root's, and the server's
        # user must reach its folders
        self.root = Path(tempfile.mkdtemp(prefix="stemd-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log = self.root / "pg.log"
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0
        self._databases = 0
        self.data.mkdir(mode=0o700)
        self.socket_dir.mkdir()
        os.chmod(self.root, 0o755)
        if self._as_postgres:
            for path in (self.root, self.data, self.socket_dir):
                shutil.chown(path, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {done.stderr}\n{log}")

    def _pg_ctl(self, action: str) -> None:
        fsync = "on" if self.fsync else "off"
        options = f"-k {self.socket_dir} -p {self.port} -c listen_addresses='' -c fsync={fsync}"
        self._run(
            "pg_ctl", "-D", str(self.data), "-w", "-t", str(START_TIMEOUT_S), "-l", str(self.log),
            "-o", options, "-m", "fast", action,
        )  # fmt: skip

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self) -> None:
        self._pg_ctl("stop")

    def restart(self) -> None:
        self._pg_ctl("restart")

    def processes(self) -> list[int]:
        """The server's processes: the postmaster (postmaster.pid) and its children."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        pids = [postmaster]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                pids.append(int(entry.name))
        return pids

    def freeze(self) -> None:
        """Every server process stopped (SIGSTOP): a server that hangs, answering nothing."""
        for pid in self.processes():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.processes():
            os.kill(pid, signal.SIGCONT)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        self._databases += 1
        name = f"stemd_{os.getpid()}_{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # already stopped by a test
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
