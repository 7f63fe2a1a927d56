"""The ledger on a real SQLite file: dedup keys, state transitions, recovery, retry."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from stemd.errors import StateError
from stemd.ledger import (
    ALLOWED_TRANSITIONS,
    FileStat,
    InputState,
    JobState,
    Ledger,
    TransitionError,
)

SHA_A = "a" * 64
SHA_B = "b" * 64
PROFILE = "p1"


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "state" / "ledger.sqlite")


def add(ledger: Ledger, name: str, ino: int = 1) -> int:
    record = ledger.add_input(Path("/inbox") / name, name, FileStat(1, ino, 100, 5))
    assert record is not None
    return record.id


def test_the_file_is_sqlite_in_wal_mode(ledger: Ledger) -> None:
    db = sqlite3.connect(ledger.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_same_file_version_is_registered_once(ledger: Ledger) -> None:
    stat = FileStat(1, 2, 3, 4)
    assert ledger.add_input(Path("/inbox/a.mp3"), "a.mp3", stat) is not None
    assert ledger.add_input(Path("/inbox/a.mp3"), "a.mp3", stat) is None
    assert ledger.known(Path("/inbox/a.mp3"), stat) is not None
    # the same path rewritten (new mtime) is a new version
    assert ledger.known(Path("/inbox/a.mp3"), FileStat(1, 2, 3, 5)) is None


def test_same_content_and_profile_share_one_job(ledger: Ledger) -> None:
    first, second = add(ledger, "a.mp3", 1), add(ledger, "copy.mp3", 2)
    job = ledger.attach(first, SHA_A, PROFILE, "a.mp3")
    again = ledger.attach(second, SHA_A, PROFILE, "copy.mp3")
    assert job.id == again.id and again.owner_input == first and again.source == "a.mp3"
    other_profile = ledger.attach(add(ledger, "b.mp3", 3), SHA_A, "p2", "b.mp3")
    assert other_profile.id != job.id
    assert [r.id for r in ledger.inputs_of(job.id)] == [first, second]


def test_claim_complete_and_counts(ledger: Ledger) -> None:
    input_id = add(ledger, "a.mp3")
    ledger.attach(input_id, SHA_A, PROFILE, "a.mp3")
    job = ledger.claim_next()
    assert job is not None and job.state is JobState.RUNNING and job.attempts == 1
    assert ledger.claim_next() is None  # one job, already running
    ledger.complete(job.id, input_id, "htdemucs/a")
    assert ledger.get_job(job.id).state is JobState.DONE
    assert ledger.get_input(input_id).state is InputState.PUBLISHED
    assert ledger.counts() == {"queued": 0, "running": 0, "done": 1, "failed": 0}


@pytest.mark.parametrize(
    ("start", "wanted"),
    [(s, w) for s in JobState for w in JobState if w not in ALLOWED_TRANSITIONS[s]],
)
def test_forbidden_transitions_are_refused(
    ledger: Ledger, start: JobState, wanted: JobState
) -> None:
    input_id = add(ledger, "a.mp3")
    job = ledger.attach(input_id, SHA_A, PROFILE, "a.mp3")
    # drive the job to `start` through allowed steps
    if start is not JobState.QUEUED:
        ledger.claim_next()
    if start is JobState.DONE:
        ledger.complete(job.id, input_id, "x")
    elif start is JobState.FAILED:
        ledger.fail(job.id, "boom")
    with pytest.raises(TransitionError):
        if wanted is JobState.RUNNING:
            with ledger._tx() as db:  # the claim path only takes queued jobs
                ledger._transition(db, job.id, JobState.RUNNING)
        elif wanted is JobState.DONE:
            ledger.complete(job.id, input_id, "x")
        elif wanted is JobState.FAILED:
            ledger.fail(job.id, "again")
        else:
            ledger.requeue(job.id, None, 0.0, count_attempt=False)
    assert ledger.get_job(job.id).state is start


def test_failure_fails_every_waiting_input_with_the_reason(ledger: Ledger) -> None:
    first, second = add(ledger, "a.mp3", 1), add(ledger, "b.mp3", 2)
    job = ledger.attach(first, SHA_A, PROFILE, "a.mp3")
    ledger.attach(second, SHA_A, PROFILE, "b.mp3")
    ledger.claim_next()
    failed = ledger.fail(job.id, "cannot decode audio")
    assert {r.id for r in failed} == {first, second}
    assert all(r.error == "cannot decode audio" for r in failed)
    report = ledger.failed_report()
    assert report == [
        {"source": "a.mp3", "sha256": SHA_A, "error": "cannot decode audio", "attempts": 1}
    ]


def test_requeue_with_backoff_and_attempt_accounting(ledger: Ledger) -> None:
    input_id = add(ledger, "a.mp3")
    job = ledger.attach(input_id, SHA_A, PROFILE, "a.mp3")
    ledger.claim_next(now=100.0)
    ledger.requeue(job.id, "flaky", delay=30.0, count_attempt=True)
    queued = ledger.get_job(job.id)
    assert queued.state is JobState.QUEUED and queued.attempts == 1 and queued.error == "flaky"
    assert ledger.claim_next(now=queued.not_before - 1) is None, "claimed before its backoff"
    again = ledger.claim_next(now=queued.not_before + 1)
    assert again is not None and again.attempts == 2
    # an interruption (shutdown) does not use up an attempt
    ledger.requeue(job.id, None, delay=0.0, count_attempt=False)
    assert ledger.get_job(job.id).attempts == 1


def test_recovery_requeues_interrupted_jobs_and_fails_the_exhausted(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    fresh = ledger.attach(add(ledger, "a.mp3", 1), SHA_A, PROFILE, "a.mp3")
    worn = ledger.attach(add(ledger, "b.mp3", 2), SHA_B, PROFILE, "b.mp3")
    ledger.claim_next()
    for _ in range(3):  # b crashed the process three times
        ledger.claim_next()
        with ledger._tx() as db:
            db.execute("UPDATE jobs SET attempts = 3 WHERE id = ?", (worn.id,))
    ledger.close()  # the "crash": nothing else is written

    reopened = Ledger(path)
    assert reopened.recover(max_attempts=3) == (1, 1)
    assert reopened.get_job(fresh.id).state is JobState.QUEUED
    assert reopened.get_job(fresh.id).attempts == 1
    failed = reopened.get_job(worn.id)
    assert failed.state is JobState.FAILED and "interrupted 3 times" in str(failed.error)
    assert reopened.recover(max_attempts=3) == (0, 0)


def test_retry_requeues_failed_jobs_by_hash_prefix_or_all(ledger: Ledger) -> None:
    a = ledger.attach(add(ledger, "a.mp3", 1), SHA_A, PROFILE, "a.mp3")
    b = ledger.attach(add(ledger, "b.mp3", 2), SHA_B, PROFILE, "b.mp3")
    for job in (a, b):
        ledger.fail(job.id, "bad")
    assert ledger.retry("aaaaaa") == 1
    retried = ledger.get_job(a.id)
    assert retried.state is JobState.QUEUED and retried.attempts == 0 and retried.error is None
    assert ledger.inputs_of(a.id)[0].state is InputState.ATTACHED
    assert ledger.retry(None) == 1
    assert ledger.retry(None) == 0


def test_refused_inputs_without_a_job_count_as_failed(ledger: Ledger) -> None:
    input_id = add(ledger, "huge.wav")
    ledger.fail_input(input_id, "over watch.max_file_size")
    assert ledger.counts()["failed"] == 1
    assert ledger.failed_report()[0]["source"] == "huge.wav"


def test_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    first = Ledger(path)
    input_id = add(first, "a.mp3")
    job = first.attach(input_id, SHA_A, PROFILE, "a.mp3")
    first.close()
    assert Ledger(path).get_job(job.id).sha256 == SHA_A


def test_a_damaged_ledger_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="move it aside"):
        Ledger(path)


def fail_job(ledger: Ledger, name: str, sha: str, ino: int) -> int:
    input_id = add(ledger, name, ino)
    job = ledger.attach(input_id, sha, PROFILE, name)
    claimed = ledger.claim_next()
    assert claimed is not None and claimed.id == job.id
    ledger.fail(job.id, "not audio")
    return input_id


def test_a_failure_is_no_longer_current_once_good_audio_at_its_path_is_published(
    ledger: Ledger,
) -> None:
    fail_job(ledger, "song.mp3", SHA_A, 1)
    assert ledger.counts()["failed"] == 1
    # the user replaced the file with good audio (new content, same path)
    good = add(ledger, "song.mp3", 2)
    job = ledger.attach(good, SHA_B, PROFILE, "song.mp3")
    assert ledger.claim_next() is not None
    ledger.complete(job.id, good, "m/song")
    assert ledger.counts() == {"queued": 0, "running": 0, "done": 1, "failed": 0}
    assert ledger.failed_report() == []
    assert ledger.retry(SHA_A[:8]) == 0  # nothing current to try again
    # a copy of the old bad bytes elsewhere is a current failure, under its own name
    other = add(ledger, "elsewhere.mp3", 3)
    ledger.attach(other, SHA_A, PROFILE, "elsewhere.mp3")
    ledger.fail_input(other, "not audio")
    assert [item["source"] for item in ledger.failed_report()] == ["elsewhere.mp3"]


def test_a_served_copy_at_a_failed_path_supersedes_the_failure(ledger: Ledger) -> None:
    fail_job(ledger, "b.mp3", SHA_A, 1)
    copy = add(ledger, "b.mp3", 2)
    ledger.finish_input(copy, InputState.DUPLICATE, "m/a")
    assert ledger.failed_report() == []


def test_dismiss_by_prefix_or_all_takes_failures_off_the_list(ledger: Ledger) -> None:
    fail_job(ledger, "a.mp3", SHA_A, 1)
    fail_job(ledger, "b.mp3", SHA_B, 2)
    ledger.fail_input(add(ledger, "huge.wav", 3), "over watch.max_file_size")  # no job
    assert ledger.counts()["failed"] == 3
    assert ledger.dismiss("cccccc") == 0
    assert ledger.dismiss(SHA_A[:6]) == 1
    assert sorted(item["source"] for item in ledger.failed_report()) == ["b.mp3", "huge.wav"]
    assert ledger.dismiss(None) == 2
    assert ledger.failed_report() == [] and ledger.counts()["failed"] == 0
    assert ledger.retry(None) == 0  # dismissed failures are not tried again by --failed
    # the same bad bytes dropped again are a current failure again
    again = add(ledger, "a again.mp3", 4)
    job = ledger.attach(again, SHA_A, PROFILE, "a again.mp3")
    assert job.state is JobState.FAILED
    ledger.fail_input(again, job.error or "")
    assert [item["source"] for item in ledger.failed_report()] == ["a again.mp3"]


def test_a_version_1_ledger_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE jobs (id INTEGER PRIMARY KEY, sha256 TEXT NOT NULL, profile TEXT NOT NULL,
            state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, error TEXT,
            source TEXT NOT NULL, owner_input INTEGER, output_dir TEXT,
            progress REAL NOT NULL DEFAULT 0, not_before REAL NOT NULL DEFAULT 0,
            created_at REAL NOT NULL, started_at REAL, finished_at REAL,
            UNIQUE (sha256, profile));
        CREATE TABLE inputs (id INTEGER PRIMARY KEY, path TEXT NOT NULL, relative TEXT NOT NULL,
            dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL, sha256 TEXT, state TEXT NOT NULL,
            job_id INTEGER REFERENCES jobs (id), output_dir TEXT, error TEXT,
            disposed INTEGER NOT NULL DEFAULT 0, detected_at REAL NOT NULL,
            updated_at REAL NOT NULL, UNIQUE (path, dev, ino, size, mtime_ns));
        INSERT INTO inputs (path, relative, dev, ino, size, mtime_ns, state, detected_at,
            updated_at) VALUES ('/inbox/old.wav', 'old.wav', 1, 1, 100, 5, 'pending', 0, 0);
        """
    )
    old.commit()
    old.close()
    ledger = Ledger(path)
    (record,) = ledger.pending_inputs()
    assert record.relative == "old.wav" and record.origin == "inbox"
    upload = ledger.add_input(Path("/s/u.wav"), "uploads/u.wav", FileStat(1, 2, 3, 4), "http")
    assert upload is not None and upload.origin == "http"
    ledger.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == "2"


def test_a_ledger_from_a_newer_stemd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="newer stemd"):
        Ledger(path)


def test_queue_position_retry_job_and_recent_jobs(ledger: Ledger) -> None:
    first = ledger.attach(add(ledger, "one.wav", 1), SHA_A, PROFILE, "one.wav")
    second = ledger.attach(add(ledger, "two.wav", 2), SHA_B, PROFILE, "two.wav")
    assert ledger.queue_position(first) == 1
    assert ledger.queue_position(second) == 2
    claimed = ledger.claim_next()
    assert claimed is not None and claimed.id == first.id
    assert ledger.queue_position(ledger.get_job(first.id)) is None
    assert ledger.queue_position(ledger.get_job(second.id)) == 1
    assert ledger.retry_job(first.id) is False  # running: nothing to retry
    ledger.fail(first.id, "broken")
    assert ledger.retry_job(first.id) is True
    again = ledger.get_job(first.id)
    assert again.state is JobState.QUEUED and again.attempts == 0 and again.error is None
    assert [j.id for j in ledger.recent_jobs()] == [second.id, first.id]
    assert [j.id for j in ledger.recent_jobs(JobState.QUEUED, 1)] == [second.id]
    assert ledger.find_job(SHA_B, PROFILE) == ledger.get_job(second.id)
    assert ledger.find_job(SHA_B, "other") is None


def test_uploads_in_use_are_those_a_job_may_still_read(ledger: Ledger) -> None:
    def upload(name: str, ino: int) -> int:
        record = ledger.add_input(Path(f"/spool/{name}"), name, FileStat(1, ino, 1, 1), "http")
        assert record is not None
        return record.id

    waiting, failed, done = upload("w", 1), upload("f", 2), upload("d", 3)
    ledger.attach(waiting, SHA_A, PROFILE, "w")
    ledger.fail_input(failed, "not audio")
    ledger.finish_input(done, InputState.PUBLISHED, "x/d")
    add(ledger, "inbox.wav", 9)  # the inbox's files are not the spool's
    assert ledger.uploads_in_use() == {Path("/spool/w"), Path("/spool/f")}
    ledger.dismiss()
    assert ledger.uploads_in_use() == {Path("/spool/w")}
