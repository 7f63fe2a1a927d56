"""What a user sees when the command line is used the ordinary Unix ways: piped
into `head`, redirected to a full disk, typed bare, or given a misspelt key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.daemon import write_config

STEMD = [sys.executable, "-m", "stemd"]


def run_with_stdout(args: list[str], stdout: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STEMD, *args],
        cwd=cwd,
        stdout=stdout,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=60,
    )


def test_a_reader_that_stops_reading_ends_the_command_quietly(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", {"inbox": "in"})
    read, write = os.pipe()
    os.close(read)  # `| head -0`: nobody will read what stemd prints
    try:
        result = run_with_stdout(["-c", str(config), "check"], write, tmp_path)
    finally:
        os.close(write)
    assert result.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored"
    assert result.returncode == 141  # as a tool killed by SIGPIPE reports it


def test_an_unwritable_output_is_one_line_and_exit_1(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", {"inbox": "in"})
    with open("/dev/full", "w") as full:
        result = run_with_stdout(["-c", str(config), "check"], full.fileno(), tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "stemd: cannot write to standard output: No space left on device"
    ]


def test_stemd_alone_lists_its_commands(tmp_path: Path) -> None:
    result = run_with_stdout([], subprocess.PIPE, tmp_path)
    assert result.returncode == 2 and result.stderr == ""
    for command in ("run", "check", "separate", "status", "retry", "models", "install-service"):
        assert f"    {command} " in result.stdout, command


def test_a_misspelt_key_is_refused_with_the_key_it_resembles(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml", {"watch": {"setle": "2s"}, "modle": {}, "model": {"devise": "cpu"}}
    )
    result = run_with_stdout(["-c", str(config), "check"], subprocess.PIPE, tmp_path)
    assert result.returncode == 78
    assert sorted(result.stderr.splitlines()) == [
        "stemd: config error: c.yaml: model.devise: unknown key; did you mean device?",
        "stemd: config error: c.yaml: modle: unknown key; did you mean model?",
        "stemd: config error: c.yaml: watch.setle: unknown key; did you mean settle?",
    ]
