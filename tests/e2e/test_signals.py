"""Signals as systemd sends them: SIGHUP with work queued, and a second SIGTERM."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

import yaml

from support.audio import make_tone
from support.daemon import Daemon, service_config, write_config
from support.instrumented_model import GATED, gated_daemon, instrumented_model, model_env
from support.notify import NotifySocket
from support.postgres import PostgresServer
from support.published import manifest_in
from support.waiting import wait_until


def manifest(root: Path, track: str) -> dict[str, Any] | None:
    return manifest_in(root / "outbox" / "gated" / track)


def drop(root: Path, name: str, seconds: float, pitch: int) -> None:
    shutil.copyfile(make_tone(root / name, seconds, frequency=pitch), root / "inbox" / name)


def hold_one_queue_more(root: Path, daemon: Daemon, gate: Path, queued: dict[str, int]) -> None:
    """first.wav held in the (gated) model, the `queued` tracks (name: pitch) behind it."""
    drop(root, "first.wav", 1.0, 300)
    wait_until((gate / "entered").exists, 60, "the first job to reach the model")
    for name, pitch in queued.items():
        drop(root, name, 1.0, pitch)
    count = len(queued)
    wait_until(lambda: daemon.report()["counts"]["queued"] == count, 30, f"{count} queued")


def test_sighup_keeps_queued_jobs_and_restarts_the_watcher_only_for_watch_changes(
    tmp_path: Path,
) -> None:
    daemon, config, gate = gated_daemon(tmp_path)
    daemon.start()
    try:
        daemon.wait_ready()
        # One job hangs in the model; two more queue behind it.
        hold_one_queue_more(tmp_path, daemon, gate, {"second.wav": 400, "third.wav": 500})

        # An output change: applied to the queued jobs, the watcher left alone.
        settings = yaml.safe_load(config.read_text())
        settings["output"] = {"format": "flac"}
        write_config(config, settings)
        daemon.signal(signal.SIGHUP)
        wait_until(
            lambda: "configuration reloaded; first.wav finishes under the old one" in daemon.log(),
            30,
            "the reload",
        )
        assert "restarting the watcher" not in daemon.log()
        assert daemon.status()["counts"] == {"queued": 2, "running": 1, "done": 0, "failed": 0}

        (gate / "open").touch()
        wait_until(lambda: daemon.report()["counts"]["done"] == 3, 60, "all three jobs")
        first, second, third = (manifest(tmp_path, t) for t in ("first", "second", "third"))
        assert first and second and third
        # The running job finished under the config it started with.
        assert first["stems"]["vocals"] == "vocals.wav"
        assert second["stems"]["vocals"] == third["stems"]["vocals"] == "vocals.flac"

        # A watch change restarts the watcher, which still sees new files.
        settings["watch"] = {"settle": "0.2s"}
        write_config(config, settings)
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: "restarting the watcher" in daemon.log(), 30, "the watcher restart")
        drop(tmp_path, "fourth.wav", 1.0, 600)
        wait_until(lambda: manifest(tmp_path, "fourth"), 60, "fourth.wav after the restart")
        assert daemon.log().count("watching ") == 2
        assert daemon.stop() == 0
    finally:
        (gate / "open").touch()
        daemon.kill()


def test_a_reload_between_jobs_applies_to_the_input_already_decoded_ahead(
    tmp_path: Path,
) -> None:
    daemon, config, gate = gated_daemon(tmp_path)
    album = tmp_path / "album"
    make_tone(album / "a.wav", 6.0, frequency=300)
    make_tone(album / "b.wav", 6.0, frequency=400)
    daemon.start()
    try:
        daemon.wait_ready()
        album.rename(tmp_path / "inbox" / "album")  # both queued before the first starts
        wait_until((gate / "entered").exists, 60, "the first job in the model")
        first, second = ("a", "b") if "album/a.wav: separating" in daemon.log() else ("b", "a")
        # While the first is in the model, the second is decoded ahead under the
        # old max_duration (2 h). A reload lowers it to 3 s before the second starts.
        settings = yaml.safe_load(config.read_text())
        settings["watch"]["max_duration"] = "3s"
        write_config(config, settings)
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in daemon.log(), 30, "the reload")
        (gate / "open").touch()
        wait_until(lambda: daemon.report()["counts"]["failed"] == 1, 60, "the second refused")
        assert daemon.status()["counts"]["done"] == 1  # the first ran under its old config
        log = daemon.log()
        assert f"album/{first}.wav: stems in" in log
        assert f"album/{second}.wav: 6s of audio is over watch.max_duration (3s)" in log
        assert daemon.stop() == 0
    finally:
        (gate / "open").touch()
        daemon.kill()


def test_a_restart_with_new_output_settings_renders_what_was_queued_with_them(
    tmp_path: Path,
) -> None:
    """Jobs are keyed by the output settings they render with, and a worker
    claims only its own settings' jobs: the jobs queued (and the one running
    when stemd was killed) must not be stranded under the old key."""
    daemon, config, gate = gated_daemon(tmp_path)
    daemon.start()
    try:
        daemon.wait_ready()
        hold_one_queue_more(tmp_path, daemon, gate, {"second.wav": 400})
        daemon.kill()  # the running job is recovered at the next start
        settings = yaml.safe_load(config.read_text())
        settings["output"] = {"format": "flac"}
        write_config(config, settings)
        (gate / "open").touch()
        daemon.start()
        wait_until(lambda: daemon.report()["counts"]["done"] == 2, 60, "both jobs")
        for track in ("first", "second"):
            found = manifest(tmp_path, track)
            assert found is not None and found["stems"]["vocals"] == "vocals.flac", found
        assert daemon.stop() == 0
    finally:
        (gate / "open").touch()
        daemon.kill()


def test_a_second_sigterm_cancels_the_running_job_at_once(tmp_path: Path) -> None:
    daemon, _config, gate = gated_daemon(tmp_path, shutdown_grace="10m")
    (gate / "open").touch()
    daemon.start()
    try:
        daemon.wait_ready()
        drop(tmp_path, "long.wav", 120.0, 300)

        def separating() -> bool:
            running = daemon.report()["running"]
            return bool(running) and running[0]["progress"] > 0

        wait_until(separating, 60, "the separation to be under way")
        daemon.signal(signal.SIGTERM)
        wait_until(lambda: "waiting up to 600s" in daemon.log(), 10, "the grace period")
        assert daemon.process is not None and daemon.process.poll() is None
        second = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.stop(timeout=30) == 0
        assert time.monotonic() - second < 30
        log = daemon.log()
        assert "second signal: cancelling the running job now" in log
        assert "long.wav: interrupted; requeued" in log
        assert daemon.status()["counts"]["queued"] == 1
        assert manifest(tmp_path, "long") is None
    finally:
        daemon.kill()


def test_a_reload_that_restarts_the_watcher_while_the_ledger_is_away_keeps_the_daemon(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """A SIGHUP that changes the watch settings restarts the watcher, whose scan asks
    the ledger. With PostgreSQL down, that used to end the daemon, and leave systemd
    waiting in RELOADING: now the reload completes, the scan waits for the ledger."""
    url = postgres.new_database()
    sections = {"ledger": {"url": url}, "watch": {"settle": "0.5s", "rescan_interval": "1h"}}
    config = service_config(tmp_path, **sections)
    with NotifySocket(tmp_path / "notify.sock") as systemd:
        daemon = Daemon(config, tmp_path, env={"NOTIFY_SOCKET": str(systemd.path)}).start()
        try:
            daemon.wait_ready()
            song = make_tone(tmp_path / "staging" / "song.wav", 1.0)
            postgres.stop()
            try:
                shutil.copyfile(song, tmp_path / "inbox" / "song.wav")  # during the outage
                changed = {**sections, "watch": {"settle": "0.7s", "rescan_interval": "1h"}}
                service_config(tmp_path, **changed)
                asked = time.monotonic()
                daemon.signal(signal.SIGHUP)
                systemd.wait_for(lambda m: "RELOADING" in m.fields, 30, "RELOADING", asked)
                systemd.wait_for(lambda m: m.fields.get("READY") == "1", 30, "READY", asked)
                wait_until(lambda: "configuration reloaded" in daemon.log(), 30, "the reload")
                assert daemon.process is not None and daemon.process.poll() is None
            finally:
                postgres.start()
            # what arrived during the outage is taken in once the ledger is back
            wait_until(
                lambda: (tmp_path / "outbox" / "demucs_unittest" / "song" / "stemd.json").exists(),
                60,
                "song.wav separated after the outage",
            )
            assert daemon.stop() == 0
        finally:
            daemon.kill()


def test_a_second_sigterm_stops_the_encoder_of_the_job_before_too(
    tmp_path: Path, instrumented_repo: Path
) -> None:
    """While one track's stems are still being encoded, the model is already on the
    next. A second SIGTERM cancels both: the cancel is the worker's for good, not
    used up by the job on the model (which used to clear it, so the encoder wrote on
    and published). Both are requeued; the daemon ends at once."""
    config = service_config(
        tmp_path,
        model=instrumented_model(instrumented_repo, GATED),  # real passes: seconds a track
        output={"format": "mp3"},  # ~50x real time a stem: the encoder takes a while
        service={"shutdown_grace": "60s"},
    )
    daemon = Daemon(config, tmp_path, env=model_env(tmp_path)[0]).start()
    try:
        daemon.wait_warm()
        for name, pitch in (("first.wav", 300), ("second.wav", 500)):
            shutil.copyfile(
                make_tone(tmp_path / name, 300.0, frequency=pitch), tmp_path / "inbox" / name
            )
        wait_until(lambda: "second.wav: separating" in daemon.log(), 120, "second.wav on the model")
        assert manifest(tmp_path, "first") is None  # first.wav's stems: still being encoded
        daemon.signal(signal.SIGTERM)
        wait_until(lambda: "waiting up to 60s" in daemon.log(), 30, "the graceful stop")
        cancelled = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.process is not None
        assert daemon.process.wait(timeout=60) == 0
        stopped_in = time.monotonic() - cancelled
        log = daemon.log()
        assert manifest(tmp_path, "first") is None, log[-3000:]  # cancelled, not published
        assert "first.wav: interrupted; requeued" in log
        assert "second.wav: interrupted; requeued" in log
        assert stopped_in < 20, f"{stopped_in:.1f}s after the second SIGTERM"
    finally:
        daemon.kill()


def test_a_sighup_changing_http_listen_says_it_needs_a_restart_and_what_it_applied(
    tmp_path: Path,
) -> None:
    """The reload's log is true: the http.listen change is named as waiting for a
    restart (the server keeps listening where it was), the rest as applied; no
    "changed: nothing" when something did change in the file."""
    from support.http import EPHEMERAL, client, http_url

    config = service_config(tmp_path, http=EPHEMERAL)
    daemon = Daemon(config, tmp_path).start()
    try:
        daemon.wait_ready()
        url = http_url(daemon)
        settings = yaml.safe_load(config.read_text())
        settings["http"] = {"listen": "127.0.0.1:1"}
        settings["output"] = {"format": "flac"}
        write_config(config, settings)
        daemon.signal(signal.SIGHUP)  # what `kill -HUP` sends outside systemd, too
        wait_until(lambda: "configuration reloaded" in daemon.log(), 30, "the reload")
        lines = daemon.log().splitlines()
        [kept] = [line for line in lines if "needs a restart" in line]
        assert "http.listen: '127.0.0.1:0' -> '127.0.0.1:1'" in kept, kept
        [changed] = [line for line in lines if "stemd: INFO: changed: " in line]
        assert changed == (
            "stemd: INFO: changed: output.format: 'wav' -> 'flac'; "
            "after a restart: http.listen: '127.0.0.1:0' -> '127.0.0.1:1'"
        )
        with client(url) as http:  # still where it was
            assert http.get("/ping").status_code == 200
        assert daemon.stop() == 0
    finally:
        daemon.kill()
