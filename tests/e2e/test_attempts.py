"""Attempts, counted through real runs: a job that crashes stemd every time ends
failed after `source.max_attempts`, and a failing job is retried after
`source.retry_delay`, twice that, ... as the README says."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest

from stemd.crash import CRASH_ENV
from support.audio import make_tone
from support.daemon import Daemon, service_config, stemd
from support.instrumented_model import FAIL_ENV, instrumented_model, model_env
from support.waiting import wait_until

SECONDS = 1.0


def drop(root: Path) -> None:
    shutil.copyfile(make_tone(root / "s" / "song.wav", SECONDS), root / "inbox" / "song.wav")


def exited(daemon: Daemon) -> bool:
    assert daemon.process is not None
    return daemon.process.poll() is not None


@pytest.mark.slow
def test_a_job_that_crashes_stemd_each_time_fails_after_max_attempts(
    tmp_path: Path, instrumented_repo: Path
) -> None:
    config = service_config(
        tmp_path, model=instrumented_model(instrumented_repo), source={"max_attempts": 2}
    )
    env, record = model_env(tmp_path)
    daemon = Daemon(config, tmp_path, env={**env, CRASH_ENV: "separating"})
    try:
        daemon.start().wait_ready()
        shutil.copyfile(
            make_tone(tmp_path / "s" / "song.wav", SECONDS), tmp_path / "inbox/song.wav"
        )
        # Attempt 1 crashes; the restart requeues the job and attempt 2 crashes too.
        for attempt in (1, 2):
            wait_until(lambda: exited(daemon), 60, f"the crash in attempt {attempt}")
            assert daemon.process is not None and daemon.process.returncode == -9, daemon.log()
            assert record.count(SECONDS) == attempt
            daemon.start()
        # The third start finds the job interrupted twice: failed, not run again.
        daemon.wait_ready()
        failed = daemon.status()["failed"]
        assert [(f["source"], f["attempts"]) for f in failed] == [("song.wav", 2)]
        assert "interrupted 2 times" in failed[0]["error"]
        assert daemon.status()["counts"] == {"queued": 0, "running": 0, "done": 0, "failed": 1}
        assert record.count(SECONDS) == 2
        assert not (tmp_path / "outbox" / "recorder" / "song").exists()
        assert daemon.stop() == 0
    finally:
        daemon.kill()


@pytest.mark.slow
def test_failed_attempts_are_retried_after_growing_pauses_then_fail_with_the_reason(
    tmp_path: Path, instrumented_repo: Path
) -> None:
    base = 3.0  # the test's source.retry_delay; the default is 10 s
    config = service_config(
        tmp_path,
        model=instrumented_model(instrumented_repo),
        source={"max_attempts": 3, "retry_delay": f"{base:g}s"},
    )
    env, record = model_env(tmp_path)
    fail = tmp_path / "fail"
    fail.touch()
    daemon = Daemon(config, tmp_path, env={**env, FAIL_ENV: str(fail)}).start()
    try:
        daemon.wait_ready()
        shutil.copyfile(
            make_tone(tmp_path / "s" / "song.wav", SECONDS), tmp_path / "inbox/song.wav"
        )

        # attempt 1, pause base, attempt 2, pause 2 x base, attempt 3: about 9 s
        wait_until(lambda: daemon.report()["failed"], 60, "song.wav to fail")
        [item] = daemon.status()["failed"]
        assert item["source"] == "song.wav" and item["attempts"] == 3
        assert item["error"] == "RuntimeError: the test model fails on request (after 3 attempts)"
        times = [p["t"] for p in record.passes()]
        assert len(times) == 3
        pauses = [b - a for a, b in itertools.pairwise(times)]
        # never early; late by at most the worker's idle poll and a busy machine
        assert base <= pauses[0] < 2 * base, pauses
        assert 2 * base <= pauses[1] < 3 * base, pauses
        log = daemon.log()
        assert f"retrying in {base:.0f}s (attempt 1 of 3)" in log
        assert f"retrying in {2 * base:.0f}s (attempt 2 of 3)" in log

        # Fixed: `stemd retry` gives it a fresh set of attempts, and it is separated.
        fail.unlink()
        result = stemd("-c", str(config), "retry", "--failed", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        wait_until(lambda: daemon.report()["counts"]["done"] == 1, 60, "song.wav after retry")
        assert record.count(SECONDS) == 4
        assert daemon.stop() == 0
    finally:
        daemon.kill()
