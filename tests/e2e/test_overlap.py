"""Decoding the next job and writing the previous one overlap the model's work.

A real ffmpeg slowed to real time (support.processes.slow_ffmpeg) makes both
visible: m4a inputs decode through ffmpeg, FLAC stems encode through it. The
gated model holds the first job in the model while the test looks.
"""

from __future__ import annotations

from pathlib import Path

from support.audio import make_tone
from support.instrumented_model import gated_daemon
from support.processes import ffmpeg_children, slow_ffmpeg
from support.waiting import wait_until


def test_the_next_input_decodes_and_the_last_stems_encode_while_the_model_works(
    tmp_path: Path,
) -> None:
    daemon, config, gate = gated_daemon(tmp_path, env=slow_ffmpeg(tmp_path / "shim"))
    text = config.read_text().replace("logging:", "output:\n  format: flac\nlogging:")
    config.write_text(text)
    album = tmp_path / "album"
    for name, pitch in (("a.m4a", 300), ("b.m4a", 500)):
        make_tone(album / name, 3.0, frequency=pitch, codec_args=("-c:a", "aac"))
    daemon.start()
    try:
        daemon.wait_ready()
        assert daemon.process is not None
        pid = daemon.process.pid
        album.rename(tmp_path / "inbox" / "album")  # both hashed before the first starts
        wait_until((gate / "entered").exists, 60, "the first job in the model")
        log = daemon.log()
        first, second = ("a", "b") if "album/a.m4a: separating" in log else ("b", "a")
        # decode-ahead: the second input is being decoded while the first is in the model
        wait_until(
            lambda: ffmpeg_children(pid, f"{second}.m4a"), 30, f"{second}.m4a decoding ahead"
        )
        (gate / "open").touch()
        # finish-behind: the second job enters the model while the first one's
        # stems are still being encoded (3 s of FLAC per stem, in real time)
        wait_until(lambda: f"album/{second}.m4a: separating" in daemon.log(), 60, "the second job")
        assert f"album/{first}.m4a: stems in" not in daemon.log()
        # an encoder ffmpeg writing the first job's stems into the outbox's temp folder
        # (one per stem, with gaps between them: looked for, not sampled once)
        node = (tmp_path / "state" / "node").read_text().strip()  # names its temp folders
        wait_until(lambda: ffmpeg_children(pid, f".stemd-tmp/{node}.job"), 30, "an encoder ffmpeg")
        wait_until(lambda: daemon.report()["counts"]["done"] == 2, 120, "both jobs")
        log = daemon.log()
        assert log.index(f"album/{second}.m4a: separating") < log.index(
            f"album/{first}.m4a: stems in"
        )
        assert daemon.stop() == 0
    finally:
        (gate / "open").touch()
        daemon.kill()
