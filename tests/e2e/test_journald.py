"""stemd's records in a real journal: fields, priorities, and the stderr fallback."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.audio import make_tone
from support.daemon import Daemon, service_config
from support.journald import PrivateJournal
from support.waiting import wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="a private mount namespace for journald needs root (CI is root)"
)

JOB_FIELDS = ("STEMD_EVENT", "STEMD_JOB", "STEMD_SHA256", "STEMD_SOURCE")


def journal_config(root: Path, target: str = "journal") -> Path:
    return service_config(root, logging={"target": target}, service={"shutdown_grace": "0s"})


def test_job_events_reach_the_journal_with_their_fields_and_priorities(tmp_path: Path) -> None:
    journal = PrivateJournal(tmp_path / "journal")
    config = journal_config(tmp_path)
    good = make_tone(tmp_path / "good.wav", 2.0)
    bad = tmp_path / "notes.mp3"
    bad.write_text("lyrics, not audio\n" * 40)
    daemon = Daemon(config, tmp_path, prefix=journal.prefix).start()
    try:
        journal.wait_for_message("stemd ready", 60, SYSLOG_IDENTIFIER="stemd")
        shutil.copyfile(good, tmp_path / "inbox/good.wav")
        shutil.copyfile(bad, tmp_path / "inbox/notes.mp3")
        journal.wait_for_message("good.wav: stems in", 60, STEMD_EVENT="done")
        journal.wait_for_message("notes.mp3", 60, STEMD_EVENT="failed")
        assert daemon.stop() == 0
        journal.wait_for_message("stemd stopped", 10, SYSLOG_IDENTIFIER="stemd")
    finally:
        daemon.kill()
        journal.stop_journald()

    records = journal.entries(SYSLOG_IDENTIFIER="stemd")
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    good_events = [r for r in records if r.get("STEMD_SOURCE") == "good.wav"]
    assert [r["STEMD_EVENT"] for r in good_events] == ["detected", "started", "done"]
    for record in good_events:
        assert all(field in record for field in JOB_FIELDS), record
        assert record["STEMD_SHA256"] == digest
        assert record["PRIORITY"] == "6"  # info
    assert len({r["STEMD_JOB"] for r in good_events}) == 1

    failures = [r for r in records if r.get("STEMD_EVENT") == "failed"]
    assert len(failures) == 1
    failure = failures[0]
    assert failure["STEMD_SOURCE"] == "notes.mp3" and failure["PRIORITY"] == "3"  # err
    assert "notes.mp3" in failure["MESSAGE"]

    ready = [r for r in records if "stemd ready" in r["MESSAGE"]]
    assert len(ready) == 1 and ready[0]["PRIORITY"] == "6" and "STEMD_EVENT" not in ready[0]
    # One handler: every record once in the journal, nothing on stderr.
    messages = [r["MESSAGE"] for r in records]
    assert len(messages) == len(set(messages)), messages
    assert daemon.log() == ""


def test_under_systemd_auto_uses_the_journal_handler_and_writes_nothing_twice(
    tmp_path: Path,
) -> None:
    """As a service, stderr is a journal stream ($JOURNAL_STREAM): `auto` must send
    structured records instead, and not also print them to that stream."""
    journal = PrivateJournal(tmp_path / "journal", stderr_to_journal=True)
    config = journal_config(tmp_path, target="auto")
    daemon = Daemon(config, tmp_path, prefix=journal.prefix).start()
    try:
        journal.wait_for_message("stemd ready", 60, SYSLOG_IDENTIFIER="stemd")
        shutil.copyfile(make_tone(tmp_path / "a.wav", 1.0), tmp_path / "inbox/a.wav")
        journal.wait_for_message("a.wav: stems in", 60, STEMD_EVENT="done")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        journal.stop_journald()
    ours = journal.entries(SYSLOG_IDENTIFIER="stemd")
    assert {r["_TRANSPORT"] for r in ours} == {"journal"}
    assert [r["STEMD_EVENT"] for r in ours if "STEMD_EVENT" in r] == [
        "detected",
        "started",
        "done",
    ]
    assert journal.entries(SYSLOG_IDENTIFIER="stemd-stderr") == []


def test_without_journald_stemd_logs_to_stderr_and_says_so_once(tmp_path: Path) -> None:
    journal = PrivateJournal(tmp_path / "journal", start_journald=False)
    config = journal_config(tmp_path)
    daemon = Daemon(config, tmp_path, prefix=journal.prefix).start()
    try:
        daemon.wait_ready()
        shutil.copyfile(make_tone(tmp_path / "a.wav", 1.0), tmp_path / "inbox/a.wav")
        wait_until(lambda: "a.wav: stems in" in daemon.log(), 60, "a.wav on stderr")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    text = daemon.log()
    notice = (
        "stemd: WARNING: journald unavailable: /run/systemd/journal/socket: "
        "No such file or directory; logging to stderr"
    )
    assert text.count("journald unavailable") == 1 and notice in text
    assert "Traceback" not in text


def test_when_journald_goes_away_stemd_moves_to_stderr_once(tmp_path: Path) -> None:
    journal = PrivateJournal(tmp_path / "journal")
    config = journal_config(tmp_path)
    daemon = Daemon(config, tmp_path, prefix=journal.prefix).start()
    try:
        journal.wait_for_message("stemd ready", 60, SYSLOG_IDENTIFIER="stemd")
        journal.stop_journald()
        for name, pitch in (("a", 440), ("b", 550)):
            tone = make_tone(tmp_path / f"{name}.wav", 1.0, frequency=pitch)
            shutil.copyfile(tone, tmp_path / f"inbox/{name}.wav")
            wait_until(lambda n=name: f"{n}.wav: stems in" in daemon.log(), 60, f"{name}.wav")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    text = daemon.log()
    assert text.count("journald stopped listening") == 1, text
    assert "Traceback" not in text and "Logging error" not in text
    assert text.index("journald stopped listening") < text.index("a.wav: stems in")


def test_an_exception_is_logged_at_err_with_its_traceback(tmp_path: Path) -> None:
    journal = PrivateJournal(tmp_path / "journal")
    script = (
        "import logging\n"
        "from stemd.logs import log, setup_logging\n"
        "assert setup_logging('journal', 'info') == 'journal'\n"
        "try:\n"
        "    raise ValueError('boom')\n"
        "except ValueError:\n"
        "    log.exception('the worker stopped on an unexpected error')\n"
    )
    result = subprocess.run(
        [*journal.prefix, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    journal.stop_journald()
    assert result.returncode == 0 and result.stderr == "", result.stderr
    (record,) = journal.entries(SYSLOG_IDENTIFIER="stemd")
    assert record["PRIORITY"] == "3"
    assert record["MESSAGE"].startswith("the worker stopped on an unexpected error")
    assert "Traceback" in record["EXCEPTION_TEXT"]
    assert "ValueError: boom" in record["EXCEPTION_TEXT"]


def test_stemd_retry_logs_a_retried_event_for_each_job_it_queues(tmp_path: Path) -> None:
    """A retry by hand is a `retried` job event in the journal, as an automatic one is."""
    from stemd.ledger import FileStat, sqlite_ledger
    from stemd.profile import Profile

    journal = PrivateJournal(tmp_path / "journal")
    config = journal_config(tmp_path)
    (tmp_path / "state").mkdir()
    ledger = sqlite_ledger(tmp_path / "state/ledger.sqlite")
    try:
        record = ledger.add_input(tmp_path / "inbox/bad.mp3", "bad.mp3", FileStat(1, 1, 2, 3))
        assert record is not None
        job = ledger.attach(record.id, "d" * 64, Profile("p", {}, "s"), "bad.mp3")
        claimed = ledger.claim_next(profile=Profile("p", {}, "s"))
        assert claimed is not None
        ledger.fail(claimed, "not audio")
    finally:
        ledger.close()
    try:
        retry = subprocess.run(
            [
                *journal.prefix,
                sys.executable,
                "-m",
                "stemd",
                "-c",
                str(config),
                "retry",
                "--failed",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert retry.returncode == 0, retry.stderr
        assert "1 job(s) queued again" in retry.stdout
        entry = journal.wait_for_message("queued again by hand", 10, STEMD_EVENT="retried")
    finally:
        journal.stop_journald()
    assert entry["SYSLOG_IDENTIFIER"] == "stemd"
    assert entry["STEMD_JOB"] == str(job.id) and entry["STEMD_SOURCE"] == "bad.mp3"
    assert entry["STEMD_SHA256"] == "d" * 64
