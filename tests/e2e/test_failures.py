"""Failures a user can put away: a bad file replaced by good audio stops being a
failure once its stems are out, and `stemd dismiss` takes the rest off the list
while the daemon runs, leaving the files where they are."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from support.audio import make_tone
from support.daemon import Daemon, service_config, stemd
from support.http import EPHEMERAL, client, http_url
from support.waiting import wait_until


def test_replaced_and_dismissed_failures_leave_the_list(tmp_path: Path) -> None:
    config = service_config(tmp_path)
    inbox = tmp_path / "inbox"
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon = Daemon(config, tmp_path).start()
    try:
        daemon.wait_ready()
        (staging / "song.mp3").write_text("a web page saved as mp3\n")
        (staging / "junk.mp3").write_text("not music either\n")
        os.rename(staging / "song.mp3", inbox / "song.mp3")
        os.rename(staging / "junk.mp3", inbox / "junk.mp3")
        wait_until(lambda: daemon.report()["counts"]["failed"] == 2, 60, "two failures")
        old = {item["source"]: item["sha256"] for item in daemon.status()["failed"]}

        # the user puts good audio where the bad song.mp3 was
        shutil.copyfile(make_tone(staging / "good.mp3", 2.0), staging / "song.mp3")
        os.replace(staging / "song.mp3", inbox / "song.mp3")
        wait_until(lambda: daemon.report()["counts"]["done"] == 1, 60, "the good song.mp3")
        status = daemon.status()
        assert status["counts"]["failed"] == 1
        assert [item["source"] for item in status["failed"]] == ["junk.mp3"]
        # its old hash is no failure to retry any more (it was hashed, then failed to decode)
        retry = stemd("-c", str(config), "retry", old["song.mp3"][:12], cwd=tmp_path)
        assert retry.returncode == 1 and "no current failure" in retry.stderr

        dismissed = stemd("-c", str(config), "dismiss", "--failed", cwd=tmp_path)
        assert dismissed.returncode == 0 and "1 failure(s) dismissed" in dismissed.stdout
        status = daemon.status()
        assert status["counts"] == {"queued": 0, "running": 0, "done": 1, "failed": 0}
        assert status["failed"] == []
        assert (inbox / "junk.mp3").read_text() == "not music either\n"  # untouched
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_status_counts_files_settling_and_copies_served(tmp_path: Path) -> None:
    config = service_config(tmp_path)
    inbox = tmp_path / "inbox"
    song = make_tone(tmp_path / "staging" / "song.wav", 2.0)
    data = song.read_bytes()
    daemon = Daemon(config, tmp_path).start()
    try:
        daemon.wait_ready()
        # a copy still being written: seen, but not yet anything the ledger counts
        with open(inbox / "song.wav", "wb") as partial:
            partial.write(data[: len(data) // 2])
            partial.flush()
            wait_until(lambda: daemon.report()["intake"]["settling"] == 1, 30, "a settling file")
            assert daemon.status()["counts"] == {"queued": 0, "running": 0, "done": 0, "failed": 0}
            text = stemd("-c", str(config), "status", cwd=tmp_path).stdout
            assert "settling: 1 file(s) still being written or settling" in text
            partial.write(data[len(data) // 2 :])
        wait_until(lambda: daemon.report()["counts"]["done"] == 1, 60, "song.wav")
        assert daemon.status()["intake"] == {"settling": 0, "waiting_for_hash": 0}

        # the same bytes under another name: served from the stems, counted as a copy
        shutil.copyfile(song, inbox / "same song.wav")
        wait_until(lambda: daemon.report()["copies"] == 1, 60, "the copy served")
        status = daemon.status()
        assert status["counts"] == {"queued": 0, "running": 0, "done": 1, "failed": 0}
        text = stemd("-c", str(config), "status", cwd=tmp_path).stdout
        assert text.splitlines()[0] == "queued 0  running 0  done 1  failed 0  copies 1"
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    # stopped: nothing is settling any more, whatever was last recorded
    assert daemon.status()["intake"]["settling"] == 0


def test_dismissed_is_one_notion_across_status_metrics_the_api_and_retry(tmp_path: Path) -> None:
    """`stemd dismiss` hides a failure from status, /metrics and the jobs API alike;
    a retry over the API brings it back as current, so failing again it is listed
    and counted again, with a `retried` event; the API's own dismiss hides it again."""
    config = service_config(tmp_path, http=EPHEMERAL)
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon = Daemon(config, tmp_path).start()
    try:
        daemon.wait_ready()
        (staging / "junk.mp3").write_text("not music\n")
        os.rename(staging / "junk.mp3", tmp_path / "inbox/junk.mp3")
        wait_until(lambda: daemon.report()["counts"]["failed"] == 1, 60, "the failure")
        with client(http_url(daemon)) as api:

            def failed_jobs(**params: str) -> list[dict[str, Any]]:
                jobs: list[dict[str, Any]] = api.get(
                    "/api/v1/jobs", params={"state": "failed", **params}
                ).json()["jobs"]
                return jobs

            def metric_failed() -> float:
                for line in api.get("/metrics").text.splitlines():
                    if line.startswith('stemd_jobs{state="failed"}'):
                        return float(line.split()[-1])
                raise AssertionError("no stemd_jobs{state=failed} in /metrics")

            [job] = failed_jobs()
            assert job["dismissed"] is False and metric_failed() == 1

            dismissed = stemd("-c", str(config), "dismiss", "--failed", cwd=tmp_path)
            assert dismissed.returncode == 0, dismissed.stderr
            assert daemon.report()["counts"]["failed"] == 0 and metric_failed() == 0
            assert failed_jobs() == []  # the API agrees with status
            [hidden] = failed_jobs(dismissed="true")
            assert hidden["id"] == job["id"] and hidden["dismissed"] is True
            assert api.get(f"/api/v1/jobs/{job['id']}").json()["dismissed"] is True

            # retried over the API, it fails again (the same bytes): current again
            retried = api.post(f"/api/v1/jobs/{job['id']}/retry")
            assert retried.status_code == 200, retried.text
            wait_until(
                lambda: api.get(f"/api/v1/jobs/{job['id']}").json()["state"] == "failed",
                60,
                "the retried job to fail again",
            )
            wait_until(lambda: daemon.report()["counts"]["failed"] == 1, 10, "status to count it")
            assert [item["source"] for item in daemon.status()["failed"]] == ["junk.mp3"]
            assert metric_failed() == 1
            assert [j["dismissed"] for j in failed_jobs()] == [False]
            assert "junk.mp3: queued again by hand (the API)" in daemon.log()

            # the API's own dismiss, as `stemd dismiss` does it
            again = api.post(f"/api/v1/jobs/{job['id']}/dismiss")
            assert again.status_code == 200 and again.json()["dismissed"] is True
            assert daemon.report()["counts"]["failed"] == 0 and failed_jobs() == []
            assert api.post(f"/api/v1/jobs/{job['id']}/dismiss").status_code == 200  # still so
        assert (tmp_path / "inbox/junk.mp3").read_text() == "not music\n"  # untouched
        assert daemon.stop() == 0
    finally:
        daemon.kill()
