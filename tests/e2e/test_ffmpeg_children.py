"""ffmpeg children die with the job: on shutdown after the grace period, and at
once on a second signal. The job is requeued and finishes after a restart.

ffmpeg is made slow for real (support.processes.slow_ffmpeg): decoding a 20 s
m4a takes 20 s, long enough to be caught in the act.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from support.audio import make_tone
from support.daemon import Daemon, service_config
from support.processes import ffmpeg_children, slow_ffmpeg
from support.waiting import wait_until


@pytest.mark.parametrize(
    ("grace", "signals"),
    [("1s", 1), ("10m", 2)],
    ids=["after-the-grace-period", "second-signal"],
)
def test_shutdown_kills_a_running_ffmpeg_and_requeues_its_job(
    tmp_path: Path, grace: str, signals: int
) -> None:
    config = service_config(tmp_path, service={"shutdown_grace": grace})
    song = make_tone(tmp_path / "staging" / "long.m4a", 20.0, codec_args=("-c:a", "aac"))
    daemon = Daemon(config, tmp_path, env=slow_ffmpeg(tmp_path / "shim")).start()
    try:
        daemon.wait_ready()
        shutil.copyfile(song, tmp_path / "inbox" / "long.m4a")
        assert daemon.process is not None
        ffmpeg = wait_until(
            lambda: ffmpeg_children(daemon.process.pid, "long.m4a"), 60, "ffmpeg decoding"
        )
        daemon.signal(signal.SIGTERM)
        if signals == 2:
            wait_until(lambda: "waiting up to 600s" in daemon.log(), 30, "the grace period")
            daemon.signal(signal.SIGTERM)
        assert daemon.process.wait(15) == 0  # well before the 20 s decode or a 10 min grace
        assert all(not Path(f"/proc/{pid}").exists() for pid in ffmpeg), "ffmpeg outlived stemd"
        assert "long.m4a: interrupted; requeued" in daemon.log()
        assert daemon.status()["counts"]["queued"] == 1
    finally:
        daemon.kill()

    # Nothing lost: with a normal ffmpeg, the next run finishes it.
    again = Daemon(config, tmp_path).start()
    try:
        wait_until(lambda: again.report()["counts"]["done"] == 1, 120, "long.m4a after restart")
        assert again.stop() == 0
    finally:
        again.kill()
