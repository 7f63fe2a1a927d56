"""A shared inbox or outbox that goes away and comes back (an unmounted share).

stemd logs it, keeps running, keeps every queued job queued while the folder is
away, never recreates a missing outbox itself, and resumes when it returns:
nothing lost, no finished job run again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from support.audio import make_tone
from support.daemon import Daemon
from support.instrumented_model import gated_daemon, record_in
from support.published import manifests_under
from support.waiting import wait_until

# Each track its own length, so the model's record tells them apart.
SECONDS = {"a.wav": 1.0, "b.wav": 1.2, "c.wav": 1.4, "d.wav": 1.6, "before.wav": 1.0}
SECONDS["during.wav"] = 1.3


def drop(root: Path, name: str, pitch: int) -> None:
    tone = make_tone(root / "staging" / name, SECONDS[name], frequency=pitch)
    shutil.copyfile(tone, root / "inbox" / name)


def published(root: Path) -> dict[str, str]:
    """{track folder: source} for every complete stem set in the outbox."""
    return {
        track: manifest["source"]
        for track, manifest in manifests_under(root / "outbox" / "gated").items()
    }


def separations(root: Path, name: str) -> int:
    """How often the model itself saw the track."""
    return record_in(root).count(SECONDS[name])


def queued_attempts(daemon: Daemon) -> list[int]:
    return [job["attempts"] for job in daemon.status()["queued"]]


def test_an_inbox_that_goes_away_keeps_its_queued_jobs_until_it_is_back(tmp_path: Path) -> None:
    daemon, _config, gate = gated_daemon(tmp_path)
    inbox, away = tmp_path / "inbox", tmp_path / "inbox.unmounted"
    daemon.start()
    try:
        daemon.wait_ready()
        drop(tmp_path, "a.wav", 300)
        wait_until((gate / "entered").exists, 60, "a.wav to reach the model")
        drop(tmp_path, "b.wav", 400)
        drop(tmp_path, "c.wav", 500)
        wait_until(lambda: daemon.report()["counts"]["queued"] == 2, 30, "b and c queued")

        inbox.rename(away)  # the share is unmounted while a.wav separates
        wait_until(lambda: f"the inbox {inbox} is gone" in daemon.log(), 30, "the inbox gone")
        (gate / "open").touch()
        wait_until(lambda: daemon.report()["counts"]["done"] == 1, 60, "a.wav to finish")
        # b and c cannot be read now; they wait instead of failing
        assert daemon.status()["counts"] == {"queued": 2, "running": 0, "done": 1, "failed": 0}
        assert daemon.process is not None and daemon.process.poll() is None

        away.rename(inbox)  # mounted again
        wait_until(lambda: f"the inbox {inbox} is back" in daemon.log(), 30, "the inbox back")
        wait_until(lambda: daemon.report()["counts"]["done"] == 3, 60, "b and c")
        assert published(tmp_path) == {"a": "a.wav", "b": "b.wav", "c": "c.wav"}
        assert [separations(tmp_path, n) for n in ("a.wav", "b.wav", "c.wav")] == [1, 1, 1]

        # Deleted and made anew: a different folder, watched afresh.
        shutil.rmtree(inbox)
        inbox.mkdir()
        # (the new folder may even get the old inode number: the deletion event tells)
        wait_until(lambda: daemon.log().count("watching ") == 3, 30, "the watcher restarted")
        # whichever saw it first says so: the deletion event, or the folder check
        # finding another folder at the path (on a loaded machine it can come first)
        said = daemon.log()
        assert f"the inbox {inbox} was deleted" in said or f"the inbox {inbox} was replaced" in said
        drop(tmp_path, "d.wav", 600)
        wait_until(lambda: daemon.report()["counts"]["done"] == 4, 60, "d.wav in the new inbox")
        assert daemon.status()["counts"]["failed"] == 0
        assert daemon.stop() == 0
    finally:
        (gate / "open").touch()
        daemon.kill()


def test_an_outbox_that_goes_away_is_not_recreated_and_the_job_waits_for_it(
    tmp_path: Path,
) -> None:
    daemon, _config, gate = gated_daemon(tmp_path)
    outbox, away = tmp_path / "outbox", tmp_path / "outbox.unmounted"
    daemon.start()
    try:
        daemon.wait_ready()
        (gate / "open").touch()
        drop(tmp_path, "before.wav", 300)
        wait_until(lambda: daemon.report()["counts"]["done"] == 1, 60, "before.wav")
        (gate / "open").unlink()
        (gate / "entered").unlink(missing_ok=True)  # only written while it waits
        drop(tmp_path, "during.wav", 400)
        wait_until((gate / "entered").exists, 60, "during.wav to reach the model")

        outbox.rename(away)
        wait_until(lambda: f"the outbox {outbox} is gone" in daemon.log(), 30, "the outbox gone")
        (gate / "open").touch()  # the stems are ready, with nowhere to go
        wait_until(
            lambda: "during.wav: interrupted, the outbox is gone; requeued" in daemon.log(),
            60,
            "during.wav to be requeued",
        )
        assert not outbox.exists()  # never recreated on the disk beneath a mount point
        assert daemon.status()["counts"] == {"queued": 1, "running": 0, "done": 1, "failed": 0}
        assert queued_attempts(daemon) == [0], "a missing outbox used up an attempt"

        away.rename(outbox)
        wait_until(lambda: daemon.report()["counts"]["done"] == 2, 60, "during.wav")
        assert published(tmp_path) == {"before": "before.wav", "during": "during.wav"}
        assert separations(tmp_path, "before.wav") == 1  # finished work is not redone
        # the one separation that had nowhere to go was kept (stemd.worker's Kept):
        # rendered from it once the outbox was back, not separated again
        assert separations(tmp_path, "during.wav") == 1
        assert not (outbox / ".stemd-tmp").exists()
        assert daemon.stop() == 0
    finally:
        (gate / "open").touch()
        daemon.kill()
