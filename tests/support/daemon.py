"""The daemon as a real subprocess: started, signalled, and read back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from support.waiting import wait_until


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# demucs' built-in test model, in 5 s chunks rather than its 40: every daemon's
# warm-up pass runs one whole chunk of silence, and at 40 s that pass took 8-15 s
# of CI's two cores per start. The tests' tracks are a few seconds long.
TEST_MODEL: dict[str, Any] = {"name": "demucs_unittest", "device": "cpu", "segment": 5}


def service_config(root: Path, **sections: Any) -> Path:
    """`root/stemd.yaml` for a daemon under test: inbox, outbox and state in `root`,
    the built-in test model, stderr logging, a 0.5 s settle, no HTTP server (the
    default port would be shared by every test; HTTP tests pass `http=`).
    `sections` replace whole top-level keys."""
    (root / "inbox").mkdir(exist_ok=True)
    config: dict[str, Any] = {
        "inbox": "inbox",
        "outbox": "outbox",
        "state_dir": "state",
        "watch": {"settle": "0.5s"},
        "model": dict(TEST_MODEL),
        "logging": {"target": "stderr"},
        "http": {"listen": None},
    }
    config.update(sections)
    return write_config(root / "stemd.yaml", config)


def stemd(
    *args: str, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a stemd command to completion (the installed package, this interpreter);
    `env` is added to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "stemd", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


# The daemons started by the running test, whose logs a failing test prints
# (tests/conftest.py): on CI, the log is all there is to read afterwards.
STARTED: list[Daemon] = []
LOG_TAIL_CHARS = 6000


def log_tails(daemons: list[Daemon]) -> str:
    """The end of each daemon's log file, headed by its folder."""
    parts = []
    for daemon in daemons:
        text = daemon.log_path.read_text(errors="replace") if daemon.log_path.exists() else ""
        parts.append(f"--- {daemon.cwd.name}: {daemon.log_path} (last {LOG_TAIL_CHARS} chars)")
        parts.append(text[-LOG_TAIL_CHARS:])
    return "\n".join(parts)


class Daemon:
    def __init__(
        self,
        config: Path,
        cwd: Path,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        self.config = config
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.prefix = prefix or []  # e.g. a wrapper that runs stemd in a namespace
        self.log_path = cwd / f"stemd-{os.getpid()}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> Daemon:
        # Each run appends to its own slice of the log file.
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it until it exits
        self.process = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "stemd", "-c", str(self.config), "run"],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if self not in STARTED:
            STARTED.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        """What this run has logged so far."""
        data = self.log_path.read_bytes()[self._log_offset :]
        return data.decode(errors="replace")

    def _wait_logged(self, text: str, timeout: float, what: str) -> None:
        """Until the log says `text`; fails at once if stemd exits first."""

        def logged() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"stemd exited early:\n{self.log()}")
            return text in self.log()

        wait_until(logged, timeout, what)

    def wait_ready(self, timeout: float = 60) -> None:
        self._wait_logged("stemd ready", timeout, "stemd to be ready")

    def wait_warm(self, timeout: float = 60) -> None:
        """Ready and the model's first pass done: the steady state of a daemon
        that has been running a while. The worker starts warming up before the
        service says ready, so either line can come first: both are waited for,
        within one `timeout`."""
        deadline = time.monotonic() + timeout
        self.wait_ready(timeout)
        self._wait_logged("warmed up in", max(0.0, deadline - time.monotonic()), "the warm-up")

    def status(self) -> dict[str, Any]:
        """`stemd status --json`, run as a user runs it."""
        result = stemd("-c", str(self.config), "status", "--json", cwd=self.cwd)
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def report(self) -> dict[str, Any]:
        """What `stemd status --json` prints, from the same code (the config,
        the ledger, `status_report`), read in this process: a command's start
        costs half a CPU second, too much to poll with while daemons work."""
        from stemd.cli.jobs import status_for
        from stemd.config import load_config

        return status_for(load_config(self.config, base_dir=self.cwd))

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait for the exit; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"stemd did not stop within {timeout}s:\n{self.log()}") from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
