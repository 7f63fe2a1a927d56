"""1000 small files at once, and 200 more with the watcher's events lost or never
raised: every one separated exactly once.

The featherweight model (tests/support/instrumented_model.py) keeps the model's share small,
so these runs measure stemd's own pipeline: watcher, settle, hash, ledger,
outbox.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.audio import make_tracks
from support.daemon import Daemon, service_config
from support.instrumented_model import FEATHER, instrumented_model, model_env, record_in
from support.mounts import needs_root
from support.waiting import wait_until

FILES = 1000
# Enough to overflow a 16-event inotify queue twelve times over, or to make a
# rescan's find visible, at a fifth of the 1000-file run's time.
FEWER = 200
pytestmark = pytest.mark.slow


def feather_daemon(root: Path, repo: Path, **watch: str) -> Daemon:
    """A daemon (not started) on the instrumented featherweight model, which
    records each separation it performs."""
    config = service_config(
        root,
        model={**instrumented_model(repo, FEATHER), "shifts": 0},
        watch={"settle": "0.5s", **watch},
    )
    return Daemon(config, root, env=model_env(root)[0])


def assert_each_separated_once(daemon: Daemon, root: Path, sources: list[str]) -> None:
    status = daemon.status()
    assert status["counts"] == {"queued": 0, "running": 0, "done": len(sources), "failed": 0}
    # As many separations as files (one pass each: 0.1 s, shifts 0), and every
    # file published once: so each was separated once, none twice, none missing.
    assert record_in(root).count() == len(sources)
    published = {
        json.loads(m.read_text())["source"]: m.parent.name
        for m in root.glob("outbox/*/**/stemd.json")
    }
    assert sorted(published) == sorted(sources)
    assert not any("(2)" in folder for folder in published.values())


def test_a_thousand_files_dropped_at_once_are_each_separated_once(
    tmp_path: Path, instrumented_repo: Path
) -> None:
    names = make_tracks(tmp_path / "staging")
    daemon = feather_daemon(tmp_path, instrumented_repo).start()
    try:
        daemon.wait_ready()
        for name in names:  # as fast as a copy tool can rename them into place
            os.rename(tmp_path / "staging" / name, tmp_path / "inbox" / name)
        wait_until(
            lambda: daemon.report()["counts"]["done"] == FILES, 300, "all 1000 files", interval=1.0
        )
        assert_each_separated_once(daemon, tmp_path, names)
        assert daemon.stop() == 0
    finally:
        daemon.kill()


QUEUED_EVENTS = Path("/proc/sys/fs/inotify/max_queued_events")


@pytest.fixture
def tiny_inotify_queue() -> Iterator[None]:
    """New inotify instances get a 16-event queue while this is active (the
    kernel reads the limit when an instance is created)."""
    saved = QUEUED_EVENTS.read_text()
    try:
        QUEUED_EVENTS.write_text("16\n")
    except OSError as err:
        pytest.skip(f"cannot lower {QUEUED_EVENTS}: {err.strerror}")
    try:
        yield
    finally:
        QUEUED_EVENTS.write_text(saved)


@needs_root
def test_events_lost_to_an_inotify_overflow_are_found_by_a_rescan(
    tmp_path: Path, instrumented_repo: Path, tiny_inotify_queue: None
) -> None:
    # No periodic rescan within the test: the overflow itself must trigger one.
    daemon = feather_daemon(tmp_path, instrumented_repo, mode="inotify", rescan_interval="1h")
    names = make_tracks(tmp_path / "staging", FEWER)
    daemon.start()
    try:
        daemon.wait_ready()
        QUEUED_EVENTS.write_text("16384\n")  # stemd has its small queue; others get theirs back
        daemon.signal(signal.SIGSTOP)  # nothing reads events while 200 arrive
        try:
            for name in names:
                os.rename(tmp_path / "staging" / name, tmp_path / "inbox" / name)
        finally:
            daemon.signal(signal.SIGCONT)
        wait_until(
            lambda: daemon.report()["counts"]["done"] == FEWER, 300, "all 200 files", interval=1.0
        )
        log = daemon.log()
        assert "Inotify queue overflowed" in log  # watchdog's warning, in stemd's log
        assert "inotify dropped events (its queue overflowed" in log
        assert_each_separated_once(daemon, tmp_path, names)
        assert daemon.stop() == 0
    finally:
        daemon.kill()


@needs_root
def test_files_that_raise_no_event_are_found_by_the_periodic_rescan(
    tmp_path: Path, instrumented_repo: Path
) -> None:
    # A share mounted inside the inbox: inotify reports nothing about its files.
    daemon = feather_daemon(tmp_path, instrumented_repo, mode="inotify", rescan_interval="2s")
    (tmp_path / "inbox" / "share").mkdir(parents=True)
    names = make_tracks(tmp_path / "nas", FEWER)
    daemon.start()
    try:
        daemon.wait_ready()
        subprocess.run(
            ["mount", "--bind", str(tmp_path / "nas"), str(tmp_path / "inbox" / "share")],
            check=True,
        )
        try:
            wait_until(
                lambda: daemon.report()["counts"]["done"] == FEWER,
                300,
                "all 200 files",
                interval=1.0,
            )
            assert_each_separated_once(daemon, tmp_path, [f"share/{name}" for name in names])
            assert daemon.stop() == 0
        finally:
            subprocess.run(["umount", "-l", str(tmp_path / "inbox" / "share")], check=True)
    finally:
        daemon.kill()
