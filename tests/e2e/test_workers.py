"""Two workers in one daemon (model.workers: 2 on the CPU), each with its own
demucs_unittest instance: both busy at once, every job separated once."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from support.audio import make_mix
from support.daemon import TEST_MODEL, Daemon, service_config
from support.published import published_manifests
from support.waiting import wait_until

TRACKS = 4
pytestmark = pytest.mark.slow


def test_two_cpu_workers_are_busy_at_once_and_run_each_job_once(tmp_path: Path) -> None:
    config = service_config(tmp_path, model={**TEST_MODEL, "workers": 2})
    daemon = Daemon(config, tmp_path).start()
    try:
        daemon.wait_warm()
        wait_until(lambda: daemon.log().count("warmed up in") == 2, 60, "both warm-ups")
        assert "shared by 2 CPU workers" in daemon.log()  # each pass gets its share of cores
        staging = tmp_path / "staging"
        staging.mkdir()
        names = []
        for i in range(TRACKS):
            make_mix(staging / f"song{i}.wav", seconds=15.0 + i)  # distinct content
            names.append(f"song{i}.wav")
        for name in names:
            os.rename(staging / name, tmp_path / "inbox" / name)

        def both_busy() -> bool:
            (node,) = daemon.report()["nodes"]
            return sum(1 for worker in node["workers"] if worker["job"] is not None) == 2

        wait_until(both_busy, 120, "both workers to run a job at the same time", interval=0.2)
        wait_until(
            lambda: daemon.report()["counts"]["done"] == TRACKS, 300, "every track separated"
        )
        status = daemon.status()
        assert status["counts"] == {"queued": 0, "running": 0, "done": TRACKS, "failed": 0}
        (node,) = status["nodes"]
        assert [worker["name"] for worker in node["workers"]] == ["w0", "w1"]
        assert all(worker["device"] == "cpu" for worker in node["workers"])
        # each job once: one start and one published folder per track, and both
        # workers took some of them
        started = re.findall(r"(song\d)\.wav: separating \(attempt 1, worker (w\d)", daemon.log())
        assert sorted(song for song, _ in started) == sorted(n[:-4] for n in names)
        assert {worker for _, worker in started} == {"w0", "w1"}
        published = [m["source"] for m in published_manifests(tmp_path / "outbox")]
        assert sorted(published) == sorted(names)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
