"""A private, real systemd-journald for one test, read back with `journalctl -o json`.

journald runs without systemd as PID 1. So that it cannot touch the machine's own
journal, it and the daemon under test share a private mount namespace (`unshare
--mount`, which needs root: CI runs as root): a fresh tmpfs on /run holds its
sockets, and its volatile journal files land in the test's folder, where
journalctl reads them from outside.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from support.waiting import wait_until

JOURNALD_CANDIDATES = ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")

JOURNALD_CONF = """\
[Journal]
Storage=volatile
ReadKMsg=no
Audit=no
ForwardToSyslog=no
ForwardToWall=no
ForwardToConsole=no
RateLimitBurst=0
"""

# $1: the test's journal folder, $2: journald, $3: start it (yes/no), $4: connect
# stdout/stderr to the journal as systemd does for a service (yes/no), setting
# $JOURNAL_STREAM to stderr's device:inode; the rest: the command to run.
WRAPPER = """\
set -eu
root=$1; journald=$2; start=$3; stream=$4; shift 4
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/systemd/journal /run/log/journal
mount --bind "$root/files" /run/log/journal
mount --bind "$root/journald.conf" /etc/systemd/journald.conf
if [ "$start" = yes ]; then
    # its own output in a file: it must not hold the test's pipes open
    "$journald" </dev/null >"$root/journald.log" 2>&1 & echo $! > "$root/journald.pid"
    for _ in $(seq 200); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
    [ -S /run/systemd/journal/socket ] || {
        echo "journald did not start:" >&2; cat "$root/journald.log" >&2; exit 1; }
fi
if [ "$stream" = yes ]; then
    exec systemd-cat -t stemd-stderr -- sh -c \\
        'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$@"' sh "$@"
fi
exec "$@"
"""


def journald_binary() -> str:
    for candidate in JOURNALD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise AssertionError(
        "systemd-journald not found; `make system-deps` installs Debian's systemd package"
    )


class PrivateJournal:
    def __init__(
        self, root: Path, start_journald: bool = True, stderr_to_journal: bool = False
    ) -> None:
        if shutil.which("unshare") is None or shutil.which("journalctl") is None:
            raise AssertionError("unshare and journalctl are needed (util-linux, systemd)")
        self.root = root
        (root / "files").mkdir(parents=True)
        (root / "journald.conf").write_text(JOURNALD_CONF)
        (root / "wrap.sh").write_text(WRAPPER)
        self.prefix = [
            *("unshare", "--mount", "--propagation", "private", "bash", str(root / "wrap.sh")),
            *(str(root), journald_binary(), "yes" if start_journald else "no"),
            "yes" if stderr_to_journal else "no",
        ]

    def entries(self, **match: str) -> list[dict[str, Any]]:
        """Every record in the journal whose fields equal `match`, oldest first."""
        if not any((self.root / "files").iterdir()):
            return []
        result = subprocess.run(
            ["journalctl", "-D", str(self.root / "files"), "-o", "json", "--no-pager"]
            + [f"{key}={value}" for key, value in match.items()],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def wait_for_message(self, text: str, timeout: float, **match: str) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            hits = [e for e in self.entries(**match) if text in str(e.get("MESSAGE", ""))]
            return hits[0] if hits else None

        entry: dict[str, Any] = wait_until(found, timeout, f"{text!r} in the journal")
        return entry

    def journald_pid(self) -> int | None:
        pid_file = self.root / "journald.pid"
        return int(pid_file.read_text()) if pid_file.exists() else None

    def stop_journald(self) -> None:
        pid = self.journald_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            # a zombie until its parent (the daemon) reaps it: that is stopped too
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except FileNotFoundError:
                return True
            return stat.rsplit(")", 1)[1].split()[0] == "Z"

        wait_until(gone, 10, "journald to stop")
