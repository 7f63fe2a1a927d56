"""Long tracks go through the running daemon in flat memory: a two-hour mp3, and
an hour at 96 kHz whose stems are resampled back to 96 kHz.

The model is the passthrough test model (support.instrumented_model): its
forward pass costs nothing, so the test takes minutes, not the hour a real
network needs on two cores. What it measures surrounds the model and does not
depend on it: decoding, the work files, the streamed sums over every chunk, the
stems' encoding, which is what grew with the track's length before. The
daemon's resident memory (VmRSS, what `top` shows) is sampled while it works,
and its peak (VmHWM) is read at the end: both must stay under the target.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from support.audio import probe
from support.daemon import Daemon, service_config
from support.instrumented_model import PASSTHROUGH, instrumented_model, model_env
from support.published import manifest_in
from support.waiting import wait_until

TRACK_SECONDS = 2 * 3600
RSS_LIMIT_MIB = 2.5 * 1024  # the target for the featherweight model
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def vm_mib(pid: int, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass  # the process is gone
    return 0.0


class RssSampler:
    """The highest VmRSS seen, sampled every `interval` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.highest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.highest = max(self.highest, vm_mib(self.pid, "VmRSS"))


def two_hour_mp3(path: Path) -> float:
    """Two hours of a tone in noise, as one mp3: a minute of it encoded once
    (mono at 22.05 kHz, lame's fastest), its frames then copied 120 times into
    one file (18 s of encoding saved; every minute keeps its encoder padding, so
    the file runs a few seconds over two hours). Returns its duration."""
    clip = path.with_name("minute.mp3")
    graph = (
        "sine=frequency=330:sample_rate=22050:duration=60[a];"
        "anoisesrc=color=pink:amplitude=0.05:sample_rate=22050:duration=60[b];"
        "[a][b]amix=inputs=2:normalize=0"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    encode = ["-ac", "1", "-b:a", "48k", "-compression_level", "9"]
    subprocess.run(
        [*ffmpeg, "-f", "lavfi", "-i", graph, *encode, str(clip)],
        check=True,
        timeout=120,
    )
    playlist = path.with_name("minutes.txt")
    playlist.write_text(f"file '{clip.name}'\n" * (TRACK_SECONDS // 60))
    subprocess.run(
        [*ffmpeg, "-f", "concat", "-safe", "0", "-i", str(playlist), "-c", "copy", str(path)],
        check=True,
        timeout=120,
    )
    clip.unlink()
    duration = float(probe(path)["duration"])
    assert TRACK_SECONDS <= duration < TRACK_SECONDS + 10
    return duration


def test_a_two_hour_mp3_is_published_whole_in_flat_memory(
    tmp_path: Path, instrumented_repo: Path
) -> None:
    track = tmp_path / "staging" / "dj set.mp3"
    seconds = two_hour_mp3(track)
    config = service_config(
        tmp_path,
        model=instrumented_model(instrumented_repo, PASSTHROUGH),
        # two stems, not four: half the disk traffic (12 GB of work files
        # otherwise), and the same streamed path
        output={"format": "wav", "two_stems": "vocals"},
    )
    daemon = Daemon(config, tmp_path, env=model_env(tmp_path)[0]).start()
    try:
        daemon.wait_warm(300)
        assert daemon.process is not None
        pid = daemon.process.pid
        (tmp_path / "inbox" / track.name).hardlink_to(track)
        folder = tmp_path / "outbox" / PASSTHROUGH / "dj set"
        with RssSampler(pid) as rss:
            wait_until(lambda: manifest_in(folder) is not None, 900, "the two-hour track", 1.0)
        peak = vm_mib(pid, "VmHWM")
        work = tmp_path / "state" / "work"  # removed just after the publish
        wait_until(lambda: not any(work.iterdir()), 60, "the job's work files to go")
    finally:
        daemon.stop(120)
    manifest = manifest_in(folder)
    assert manifest is not None
    assert abs(manifest["duration_seconds"] - seconds) < 1.0
    assert set(manifest["stems"]) == {"vocals", "no_vocals"}
    for stem in manifest["stems"].values():
        info = probe(folder / stem)
        assert abs(float(info["duration"]) - seconds) < 1.0, stem
    print(f"two-hour mp3: highest VmRSS sampled {rss.highest:.0f} MiB, VmHWM {peak:.0f} MiB")
    assert rss.highest <= RSS_LIMIT_MIB
    assert peak <= RSS_LIMIT_MIB


def hour_at_96_khz(path: Path) -> float:
    """An hour of a 96 kHz stereo WAV (1.4 GB): a minute made once, its PCM
    copied 60 times into one file. Returns its duration."""
    clip = path.with_name("minute96.wav")
    path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    graph = (
        "sine=frequency=330:sample_rate=96000:duration=60[a];"
        "anoisesrc=color=pink:amplitude=0.05:sample_rate=96000:duration=60[b];"
        "[a][b]amix=inputs=2:normalize=0"
    )
    subprocess.run(
        [*ffmpeg, "-f", "lavfi", "-i", graph, "-ac", "2", str(clip)], check=True, timeout=120
    )
    playlist = path.with_name("minutes96.txt")
    playlist.write_text(f"file '{clip.name}'\n" * 60)
    subprocess.run(
        [*ffmpeg, "-f", "concat", "-safe", "0", "-i", str(playlist), "-c", "copy", str(path)],
        check=True,
        timeout=120,
    )
    clip.unlink()
    return float(probe(path)["duration"])


def test_an_hour_at_96_khz_comes_back_at_96_khz_in_flat_memory(
    tmp_path: Path, instrumented_repo: Path
) -> None:
    track = tmp_path / "staging" / "archive.wav"
    seconds = hour_at_96_khz(track)
    assert abs(seconds - 3600) < 0.1
    config = service_config(
        tmp_path,
        model=instrumented_model(instrumented_repo, PASSTHROUGH),
        # one stem: the resampled path is the same for each, and the outbox
        # gets 1.4 GB rather than 5.5
        output={"format": "wav", "sample_rate": "source", "stems": ["vocals"]},
    )
    daemon = Daemon(config, tmp_path, env=model_env(tmp_path)[0]).start()
    try:
        daemon.wait_warm(300)
        assert daemon.process is not None
        pid = daemon.process.pid
        os.link(track, tmp_path / "inbox" / track.name)
        folder = tmp_path / "outbox" / PASSTHROUGH / "archive"
        with RssSampler(pid) as rss:
            wait_until(lambda: manifest_in(folder) is not None, 900, "the 96 kHz hour", 1.0)
        peak = vm_mib(pid, "VmHWM")
    finally:
        daemon.stop(120)
    manifest = manifest_in(folder)
    assert manifest is not None
    assert (manifest["samplerate"], list(manifest["stems"])) == (96000, ["vocals"])
    info = probe(folder / manifest["stems"]["vocals"])
    assert info["sample_rate"] == "96000"
    assert abs(float(info["duration"]) - seconds) < 0.01
    print(f"96 kHz hour: highest VmRSS sampled {rss.highest:.0f} MiB, VmHWM {peak:.0f} MiB")
    assert rss.highest <= RSS_LIMIT_MIB
    assert peak <= RSS_LIMIT_MIB
