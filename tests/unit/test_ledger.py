"""The ledger's operations, run against both backends: a real SQLite file and a
real PostgreSQL database (a private server, tests/support/postgres.py). Dedup
keys, state transitions, leases and fencing, recovery, retry, migrations."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from stemd.errors import StateError
from stemd.ledger import (
    ALLOWED_TRANSITIONS,
    Drained,
    Fault,
    FileStat,
    InputRecord,
    InputState,
    InputTaken,
    JobRecord,
    JobState,
    LeaseLost,
    Ledger,
    LedgerUnavailable,
    TransitionError,
    connect,
    sqlite_ledger,
)
from stemd.ledger.schema import BASE_SCHEMA
from stemd.profile import Profile
from support.postgres import PostgresServer
from support.waiting import wait_until

SHA_A = "a" * 64
SHA_B = "b" * 64


def profile(key: str, separation: str = "model-a") -> Profile:
    """A job key of `key`'s output settings over the separation (model) named."""
    return Profile(key, {"output": key, "model": separation}, separation)


PROFILE = profile("p1")
# output settings of one model: a worker of either renders jobs of both
WAV, FLAC, OLD, NEW = profile("wav"), profile("flac"), profile("old"), profile("new")
# hosts of two models: each renders only its own model's jobs
FLAC_B, WAV_C = profile("flac", "model-b"), profile("wav", "model-c")


def rekey_to(
    ledger: Ledger, target: Profile, stale_after: float = 60, everything: bool = False
) -> list[tuple[InputRecord, JobRecord]]:
    """Re-key what `ledger`'s node may to `target` (its own settings)."""
    return ledger.rekey_queued(lambda _owner: target, target, everything, stale_after)


Opener = Callable[..., Ledger]  # opener(node="") -> another connection to one ledger


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens connections to one fresh ledger of each backend; closes them after."""
    opened: list[Ledger] = []
    if request.param == "sqlite":
        state = tmp_path / "state"
        url = None
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        state, url = tmp_path, server.new_database()

    def open_ledger(node: str = "") -> Ledger:
        ledger = connect(state, url, None, node)
        opened.append(ledger)
        return ledger

    yield open_ledger
    for ledger in opened:
        ledger.close()


@pytest.fixture
def ledger(opener: Opener) -> Ledger:
    return opener()


def add(ledger: Ledger, name: str, ino: int = 1) -> int:
    record = ledger.add_input(Path("/inbox") / name, name, FileStat(1, ino, 100, 5))
    assert record is not None
    return record.id


def test_the_file_is_sqlite_in_wal_mode(tmp_path: Path) -> None:
    ledger = sqlite_ledger(tmp_path / "ledger.sqlite")
    db = sqlite3.connect(ledger.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_same_file_version_is_registered_once(ledger: Ledger) -> None:
    stat = FileStat(1, 2, 3, 4)
    assert ledger.add_input(Path("/inbox/a.mp3"), "a.mp3", stat) is not None
    assert ledger.add_input(Path("/inbox/a.mp3"), "a.mp3", stat) is None
    path = Path("/inbox/a.mp3")
    assert ledger.known_versions([(path, stat)]) == {path}
    # the same path rewritten (new mtime) is a new version
    assert ledger.known_versions([(path, FileStat(1, 2, 3, 5))]) == set()
    # a folder's files are asked about at once: only the known versions answer
    other = Path("/inbox/b.mp3")
    assert ledger.known_versions([(path, stat), (other, stat)]) == {path}


def test_same_content_and_profile_share_one_job(ledger: Ledger) -> None:
    first, second = add(ledger, "a.mp3", 1), add(ledger, "copy.mp3", 2)
    job = ledger.attach(first, SHA_A, PROFILE, "a.mp3")
    again = ledger.attach(second, SHA_A, PROFILE, "copy.mp3")
    assert job.id == again.id and again.owner_input == first and again.source == "a.mp3"
    other_profile = ledger.attach(add(ledger, "b.mp3", 3), SHA_A, profile("p2"), "b.mp3")
    assert other_profile.id != job.id
    assert [r.id for r in ledger.inputs_of(job.id)] == [first, second]


def test_claim_complete_and_counts(ledger: Ledger) -> None:
    input_id = add(ledger, "a.mp3")
    ledger.attach(input_id, SHA_A, PROFILE, "a.mp3")
    job = ledger.claim_next(profile=PROFILE)
    assert job is not None and job.state is JobState.RUNNING and job.attempts == 1
    assert ledger.claim_next(profile=PROFILE) is None  # one job, already running
    ledger.complete(job, input_id, "htdemucs/a")
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
        claimed = ledger.claim_next(profile=PROFILE)
        assert claimed is not None
        job = claimed
    if start is JobState.DONE:
        ledger.complete(job, input_id, "x")
    elif start is JobState.FAILED:
        ledger.fail(job, "boom")
    job = ledger.get_job(job.id)
    # the checks a worker's write meets (holding a claim) come first: without one
    with pytest.raises(TransitionError), ledger._write() as db:
        if wanted is JobState.RUNNING:  # the claim path only takes queued jobs
            ledger._transition(db, job.id, JobState.RUNNING)
        else:
            ledger._transition(db, job.id, wanted)
    assert ledger.get_job(job.id).state is start


def test_failure_fails_every_waiting_input_with_the_reason(ledger: Ledger) -> None:
    first, second = add(ledger, "a.mp3", 1), add(ledger, "b.mp3", 2)
    ledger.attach(first, SHA_A, PROFILE, "a.mp3")
    ledger.attach(second, SHA_A, PROFILE, "b.mp3")
    claimed = ledger.claim_next(profile=PROFILE)
    assert claimed is not None
    failed = ledger.fail(claimed, "cannot decode audio")
    assert {r.id for r in failed} == {first, second}
    assert all(r.error == "cannot decode audio" for r in failed)
    report = ledger.failed_report()
    assert report == [
        {"source": "a.mp3", "sha256": SHA_A, "error": "cannot decode audio", "attempts": 1}
    ]


def test_a_failure_says_whose_fault_it_was_until_it_is_retried(ledger: Ledger) -> None:
    """The file's fault (a /predict 422) or stemd's (a 500); a retry clears it."""
    bad, flaky = add(ledger, "bad.mp3", 1), add(ledger, "flaky.mp3", 2)
    bad_job = ledger.attach(bad, SHA_A, PROFILE, "bad.mp3")
    flaky_job = ledger.attach(flaky, SHA_B, PROFILE, "flaky.mp3")
    for _ in range(2):
        claimed = ledger.claim_next(profile=PROFILE)
        assert claimed is not None
        if claimed.id == bad_job.id:
            ledger.fail(claimed, "corrupt", Fault.INPUT)
        else:
            ledger.fail(claimed, "gave up (after 3 attempts)")
    assert ledger.get_job(bad_job.id).fault is Fault.INPUT
    assert ledger.get_job(flaky_job.id).fault is Fault.STEMD
    assert ledger.retry(SHA_A[:8]) == 1
    assert ledger.get_job(bad_job.id).fault is None
    assert ledger.get_job(bad_job.id).state is JobState.QUEUED


def test_a_question_mark_in_a_literal_is_no_placeholder(ledger: Ledger) -> None:
    """The one set of statements speaks SQLite's `?`; PostgreSQL gets `%s` only where
    a `?` is a placeholder, never inside a quoted literal (and `%` survives)."""
    with ledger._read() as db:
        row = db.execute(
            "SELECT 'why?' AS q, ? AS v, 'it''s 100% ?' AS p, \"job\" AS \"who?\" "
            "FROM (SELECT 1 AS job) AS t WHERE ? = ?",
            ("given", 1, 1),
        ).fetchone()
    assert (row["q"], row["v"], row["p"], row["who?"]) == ("why?", "given", "it's 100% ?", 1)


def test_a_done_job_whose_stems_cannot_be_copied_is_rendered_again(ledger: Ledger) -> None:
    first, copy = add(ledger, "a.mp3", 1), add(ledger, "copy.mp3", 2)
    job = ledger.attach(first, SHA_A, PROFILE, "a.mp3")
    claimed = ledger.claim_next(profile=PROFILE)
    assert claimed is not None
    ledger.complete(claimed, first, "htdemucs/a")
    ledger.attach(copy, SHA_A, PROFILE, "copy.mp3")
    ledger.rerender(ledger.get_job(job.id), ledger.get_input(copy))
    again = ledger.get_job(job.id)
    assert again.state is JobState.QUEUED and again.output_dir is None
    assert again.owner_input == copy and again.source == "copy.mp3" and again.attempts == 0
    assert ledger.get_input(first).state is InputState.PUBLISHED  # its folder stays as is
    claimed = ledger.claim_next(profile=PROFILE)
    assert claimed is not None and claimed.id == job.id and claimed.claim == 2
    # a second input (or host) that read the job while it was done: nothing changes
    # under it, the running job is not taken away
    third = add(ledger, "third.mp3", 3)
    ledger.attach(third, SHA_A, PROFILE, "third.mp3")
    stale = ledger.get_job(job.id)
    assert stale.state is JobState.RUNNING
    done_before = replace(again, state=JobState.DONE, output_dir="htdemucs/a")
    assert ledger.rerender(done_before, ledger.get_input(third)) is False
    assert ledger.get_job(job.id).state is JobState.RUNNING
    assert ledger.get_job(job.id).owner_input == copy


def test_requeue_with_backoff_and_attempt_accounting(ledger: Ledger) -> None:
    input_id = add(ledger, "a.mp3")
    job = ledger.attach(input_id, SHA_A, PROFILE, "a.mp3")
    claimed = ledger.claim_next(profile=PROFILE)
    assert claimed is not None
    ledger.requeue(claimed, "flaky", delay=30.0, count_attempt=True)
    queued = ledger.get_job(job.id)
    assert queued.state is JobState.QUEUED and queued.attempts == 1 and queued.error == "flaky"
    assert queued.not_before - (claimed.started_at or 0) == pytest.approx(30.0, abs=5.0)
    assert ledger.claim_next(profile=PROFILE) is None, "claimed before its backoff"
    # the backoff runs out (moved back, rather than waited for): claimable again
    with ledger._write() as db:
        db.execute("UPDATE jobs SET not_before = not_before - 30 WHERE id = ?", (job.id,))
    again = ledger.claim_next(profile=PROFILE)
    assert again is not None and again.attempts == 2
    # an interruption (shutdown) does not use up an attempt
    ledger.requeue(again, None, delay=0.0, count_attempt=False)
    assert ledger.get_job(job.id).attempts == 1


def test_recovery_requeues_interrupted_jobs_and_fails_the_exhausted(opener: Opener) -> None:
    ledger = opener("node1")
    fresh = ledger.attach(add(ledger, "a.mp3", 1), SHA_A, PROFILE, "a.mp3")
    worn = ledger.attach(add(ledger, "b.mp3", 2), SHA_B, PROFILE, "b.mp3")
    ledger.claim_next(profile=PROFILE)
    ledger.claim_next(profile=PROFILE)  # b crashed the process three times
    with ledger._write() as db:
        db.execute("UPDATE jobs SET attempts = 3 WHERE id = ?", (worn.id,))
    ledger.close()  # the "crash": nothing else is written

    if ledger.backend.shared:  # another daemon's jobs are its own, until their leases run out
        assert opener("node2").recover(max_attempts=3) == (0, 0)
    reopened = opener("node1")
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
        ledger.fail(job, "bad")
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


def test_state_survives_reopening(opener: Opener) -> None:
    first = opener()
    input_id = add(first, "a.mp3")
    job = first.attach(input_id, SHA_A, PROFILE, "a.mp3")
    first.close()
    assert opener().get_job(job.id).sha256 == SHA_A


def test_a_damaged_ledger_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="move it aside"):
        sqlite_ledger(path)


def fail_job(ledger: Ledger, name: str, sha: str, ino: int) -> int:
    input_id = add(ledger, name, ino)
    job = ledger.attach(input_id, sha, PROFILE, name)
    claimed = ledger.claim_next(profile=PROFILE)
    assert claimed is not None and claimed.id == job.id
    ledger.fail(claimed, "not audio")
    return input_id


def test_a_failure_is_no_longer_current_once_good_audio_at_its_path_is_published(
    ledger: Ledger,
) -> None:
    fail_job(ledger, "song.mp3", SHA_A, 1)
    assert ledger.counts()["failed"] == 1
    # the user replaced the file with good audio (new content, same path)
    good = add(ledger, "song.mp3", 2)
    ledger.attach(good, SHA_B, PROFILE, "song.mp3")
    claimed = ledger.claim_next(profile=PROFILE)
    assert claimed is not None
    ledger.complete(claimed, good, "m/song")
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


def test_a_retried_dismissed_job_is_current_again_but_not_where_good_audio_replaced_it(
    ledger: Ledger,
) -> None:
    """A retry makes the inputs dismissed by hand wait for the job again (failing
    again, it is counted and listed); one whose path good audio took since stays put."""
    kept = fail_job(ledger, "a.mp3", SHA_A, 1)
    replaced = add(ledger, "b.mp3", 2)
    job = ledger.attach(replaced, SHA_A, PROFILE, "b.mp3")  # the same bad bytes: failed
    assert job.state is JobState.FAILED
    ledger.fail_input(replaced, "not audio")
    copy = add(ledger, "b.mp3", 3)  # good audio at b.mp3, served as a copy
    ledger.finish_input(copy, InputState.DUPLICATE, "m/other")
    assert ledger.dismiss(None) == 1
    assert ledger.recent_jobs(JobState.FAILED) == [] and ledger.counts()["failed"] == 0
    assert [j.id for j in ledger.recent_jobs(JobState.FAILED, dismissed=True)] == [job.id]
    assert not ledger.failure_is_current(job.id)

    assert ledger.retry_job(job.id) is True
    assert ledger.get_input(kept).state is InputState.ATTACHED
    assert ledger.get_input(replaced).state is InputState.DISMISSED
    claimed = ledger.claim_next(profile=PROFILE)
    assert claimed is not None and claimed.id == job.id
    ledger.fail(claimed, "not audio, still")
    assert ledger.failure_is_current(job.id) and ledger.counts()["failed"] == 1
    assert [item["source"] for item in ledger.failed_report()] == ["a.mp3"]
    assert ledger.dismiss_job(job.id) is True
    assert ledger.counts()["failed"] == 0


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
    ledger = sqlite_ledger(path)
    (record,) = ledger.pending_inputs()
    assert record.relative == "old.wav" and record.origin == "inbox"
    upload = ledger.add_input(Path("/s/u.wav"), "uploads/u.wav", FileStat(1, 2, 3, 4), "http")
    assert upload is not None and upload.origin == "http"
    ledger.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == "6"


def test_a_ledger_from_a_newer_stemd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    sqlite_ledger(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="newer stemd"):
        sqlite_ledger(path)


def test_queue_position_retry_job_and_recent_jobs(ledger: Ledger) -> None:
    first = ledger.attach(add(ledger, "one.wav", 1), SHA_A, PROFILE, "one.wav")
    second = ledger.attach(add(ledger, "two.wav", 2), SHA_B, PROFILE, "two.wav")
    assert ledger.queue_position(first) == 1
    assert ledger.queue_position(second) == 2
    claimed = ledger.claim_next(profile=PROFILE)
    assert claimed is not None and claimed.id == first.id
    assert ledger.queue_position(ledger.get_job(first.id)) is None
    assert ledger.queue_position(ledger.get_job(second.id)) == 1
    assert ledger.retry_job(first.id) is False  # running: nothing to retry
    ledger.fail(claimed, "broken")
    assert ledger.retry_job(first.id) is True
    again = ledger.get_job(first.id)
    assert again.state is JobState.QUEUED and again.attempts == 0 and again.error is None
    assert [j.id for j in ledger.recent_jobs()] == [second.id, first.id]
    assert [j.id for j in ledger.recent_jobs(JobState.QUEUED, 1)] == [second.id]
    assert ledger.find_job(SHA_B, PROFILE.key) == ledger.get_job(second.id)
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


# -- several workers and hosts: leases, fencing, nodes ------------------------------


def two_hosts(postgres: PostgresServer) -> tuple[Ledger, Ledger]:
    """Two daemons' connections to one PostgreSQL ledger (SQLite is one host's)."""
    url = postgres.new_database()
    return connect(Path("/a"), url, None, "host-a"), connect(Path("/b"), url, None, "host-b")


def test_concurrent_claims_take_every_job_once(opener: Opener) -> None:
    setup = opener("setup")
    for n in range(40):
        setup.attach(add(setup, f"{n}.wav", n + 1), f"{n:064x}", PROFILE, f"{n}.wav")
    taken: dict[str, list[int]] = {}
    ledgers = [opener(f"node{i}") for i in range(4)]
    start = threading.Barrier(len(ledgers))

    def drain(ledger: Ledger) -> None:
        start.wait(timeout=10)
        mine = taken.setdefault(ledger.node, [])
        while (job := ledger.claim_next("w0", lease=60, profile=PROFILE)) is not None:
            mine.append(job.id)

    threads = [threading.Thread(target=drain, args=(ledger,)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    claimed = [job_id for ids in taken.values() for job_id in ids]
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 40
    assert setup.counts()["running"] == 40


def test_a_lease_that_runs_out_is_taken_over_and_the_late_worker_is_fenced_off(
    opener: Opener,
) -> None:
    first, second = opener("host-a"), opener("host-b")
    input_id = add(first, "a.wav")
    first.attach(input_id, SHA_A, PROFILE, "a.wav")
    held = first.claim_next("w0", lease=0.5, profile=PROFILE)
    assert held is not None and held.lease_owner == "host-a/w0" and held.attempts == 1
    assert second.claim_next("w0", lease=30, profile=PROFILE) is None, "taken while its lease ran"
    taken = wait_until(
        lambda: second.claim_next("w0", lease=30, profile=PROFILE), 10, "the lease to run out"
    )
    assert taken.id == held.id and taken.claim == held.claim + 1
    assert taken.attempts == 1 and taken.lost == 1, "a lost host is not a failed attempt"
    assert taken.lease_owner == "host-b/w0"
    # the first worker wakes up late: every write it tries for the job is refused
    assert not first.holds(held, lease=30)
    assert first.renew({held.id: held.claim}, lease=30) == {held.id}
    first.set_progress(held, 0.9)
    for write in (
        lambda: first.complete(held, input_id, "late/a"),
        lambda: first.requeue(held, "late", 0.0, count_attempt=True),
        lambda: first.fail(held, "late"),
    ):
        with pytest.raises(LeaseLost):
            write()
    assert second.get_job(held.id).progress == 0.0
    assert second.holds(taken, lease=30)
    second.complete(taken, input_id, "b/a")
    done = first.get_job(held.id)
    assert done.state is JobState.DONE and done.output_dir == "b/a" and done.lease_owner is None


def test_renewed_leases_are_kept(opener: Opener) -> None:
    first, second = opener("host-a"), opener("host-b")
    first.attach(add(first, "a.wav"), SHA_A, PROFILE, "a.wav")
    held = first.claim_next("w0", lease=1.0, profile=PROFILE)
    assert held is not None
    deadline = time.monotonic() + 2.5  # past two and a half leases
    while time.monotonic() < deadline:
        assert first.renew({held.id: held.claim}, lease=1.0) == set()
        assert second.claim_next("w0", lease=30, profile=PROFILE) is None
        time.sleep(0.2)  # a heartbeat's interval, not a synchronisation


def test_each_daemon_hashes_its_own_inputs_until_it_is_gone(postgres: PostgresServer) -> None:
    first, second = two_hosts(postgres)
    for ledger in (first, second):
        ledger.report_node("h", 1, 0.0, 0, [])
    mine = add(first, "a.wav", 1)
    assert [r.id for r in first.pending_inputs()] == [mine]
    assert second.pending_inputs(stale_after=60) == []
    # host-a stops reporting: after stale_after its pending inputs are adopted
    adopted = wait_until(lambda: second.pending_inputs(stale_after=0.3), 10, "adoption")
    assert [r.id for r in adopted] == [mine] and adopted[0].node == "host-b"
    assert [n.node for n in second.nodes()] == ["host-a", "host-b"]
    first.leave()
    assert [n.node for n in second.nodes()] == ["host-b"]


def test_a_host_that_stops_is_no_node_but_its_queue_waits_out_a_restart(
    postgres: PostgresServer,
) -> None:
    """`systemctl restart` on a host of another model: while it is down
    (seconds, or a long model load) a host beside it must not take its queue to
    separate with its own model."""
    flac, wav = two_hosts(postgres)
    for ledger in (flac, wav):
        ledger.report_node("h", 1, 0.0, 0, [])
    queued = flac.attach(add(flac, "a.wav", 1), SHA_A, FLAC_B, "a.wav")
    flac.leave()
    assert [n.node for n in wav.nodes()] == ["host-b"]  # stopped: no node that runs
    assert rekey_to(wav, WAV_C) == []
    assert wav.get_job(queued.id).profile == FLAC_B.key
    # ... and once it has been away longer than the grace, it is a gone host
    rekey_to(wav, WAV_C, stale_after=0)
    assert wav.get_job(queued.id).profile == WAV_C.key


def test_an_idle_host_takes_over_the_unhashed_files_of_a_host_whose_workers_are_busy(
    postgres: PostgresServer,
) -> None:
    """A host hashes between jobs: while its one worker runs a long job, files
    it registered would wait, and an idle host beside it would have nothing to
    claim."""
    busy, idle = two_hosts(postgres)
    running = {"name": "w0", "alive": True, "job": 7, "source": "long.wav", "progress": 0.1}
    free = {**running, "job": None, "source": None, "progress": None}
    busy.report_node("h", 1, 0.0, 0, [free])
    idle.report_node("h", 2, 0.0, 0, [free])
    waiting = add(busy, "a.wav", 1)
    assert idle.pending_inputs() == []  # its owner has a worker free to hash it
    upload = busy.add_input(Path("/spool/u.wav"), "uploads/u.wav", FileStat(1, 9, 1, 1), "http")
    assert upload is not None
    busy.report_node("h", 1, 0.0, 0, [running])
    (taken,) = idle.pending_inputs()  # the upload's spool is readable only on its host
    assert taken.id == waiting and taken.node == "host-b"
    # the busy host had picked it to hash before it was taken: it attaches nothing
    assert not busy.holds_input(waiting)
    with pytest.raises(InputTaken):
        busy.attach(waiting, SHA_A, PROFILE, "a.wav")
    job = idle.attach(waiting, SHA_A, PROFILE, "a.wav")
    assert [r.id for r in idle.inputs_of(job.id)] == [waiting]
    assert [r.id for r in busy.pending_inputs()] == [upload.id]


def test_a_job_for_an_upload_runs_only_where_the_upload_is(postgres: PostgresServer) -> None:
    first, second = two_hosts(postgres)
    upload = first.add_input(Path("/spool/u.wav"), "uploads/u.wav", FileStat(1, 7, 1, 1), "http")
    assert upload is not None
    first.attach(upload.id, SHA_A, PROFILE, "uploads/u.wav")
    assert second.claim_next("w0", profile=PROFILE) is None
    claimed = first.claim_next("w0", profile=PROFILE)
    assert claimed is not None and claimed.pinned == "host-a"


def test_a_host_claims_only_jobs_of_the_separation_its_model_makes(
    postgres: PostgresServer,
) -> None:
    """Hosts of different models on one ledger: each job is separated by a host
    whose model is the one its key names."""
    wav_host, flac_host = two_hosts(postgres)
    wav_host.report_node("a", 1, 0.0, 0, [])
    flac_host.report_node("b", 1, 0.0, 0, [])
    wav_job = wav_host.attach(add(wav_host, "a.wav", 1), SHA_A, WAV_C, "a.wav")
    assert flac_host.next_queued(FLAC_B) is None
    assert flac_host.claim_next("w0", profile=FLAC_B) is None
    # a live host's queued job is its own to render: not re-keyed by the other
    assert rekey_to(flac_host, FLAC_B) == []
    claimed = wav_host.claim_next("w0", profile=WAV_C)
    assert claimed is not None and claimed.id == wav_job.id


def test_a_host_of_other_output_settings_claims_a_job_and_keeps_its_key(
    postgres: PostgresServer,
) -> None:
    """Hosts of one model and other output settings (or one host's rules): a
    job keeps the parameters its key names, so any of them renders it as asked."""
    wav_host, flac_host = two_hosts(postgres)
    wav_job = wav_host.attach(add(wav_host, "a.wav", 1), SHA_A, WAV, "a.wav")
    upcoming = flac_host.next_queued(FLAC)
    assert upcoming is not None and upcoming.id == wav_job.id
    claimed = flac_host.claim_next("w0", profile=FLAC)
    assert claimed is not None and claimed.id == wav_job.id
    assert claimed.profile == WAV.key and claimed.params == WAV.params


def test_content_another_worker_is_separating_waits_for_that_worker(opener: Opener) -> None:
    """Two workers, one song asked for two ways: the second job is left to the
    worker separating the song (it renders it from that separation), not
    separated again by the idle one; a lease that ran out frees it."""
    ledger = opener("host-a")
    first = ledger.attach(add(ledger, "karaoke/a.wav", 1), SHA_A, WAV, "karaoke/a.wav")
    twin = ledger.attach(add(ledger, "practice/a.wav", 2), SHA_A, FLAC, "practice/a.wav")
    other = ledger.attach(add(ledger, "b.wav", 3), SHA_B, WAV, "b.wav")
    held = ledger.claim_next("w0", lease=0.5, profile=WAV)
    assert held is not None and held.id == first.id
    assert ledger.next_queued(WAV, worker="w1") == ledger.get_job(other.id)
    taken = ledger.claim_next("w1", profile=WAV)
    assert taken is not None and taken.id == other.id  # not the twin
    assert ledger.claim_next("w1", profile=WAV) is None
    # the separating worker itself takes it next (its finish-behind still runs job 1)
    mine = ledger.claim_next("w0", profile=WAV, prefer=SHA_A)
    assert mine is not None and mine.id == twin.id
    ledger.requeue(mine, None, 0.0, False)

    # w0 is gone: once its lease ran out, w1 takes the first job over, then the twin
    def w1_takes() -> list[int]:
        got = ledger.claim_next("w1", profile=FLAC)
        return [got.id] if got is not None else []

    assert wait_until(w1_takes, 10, "the first job's lease to run out") == [first.id]
    again = ledger.claim_next("w1", profile=FLAC)
    assert again is not None and again.id == twin.id


def test_a_claim_prefers_the_content_whose_separation_the_worker_holds(opener: Opener) -> None:
    ledger = opener("host-a")
    older = ledger.attach(add(ledger, "a.wav", 1), SHA_A, WAV, "a.wav")
    mine = ledger.attach(add(ledger, "b.wav", 2), SHA_B, FLAC, "b.wav")
    claimed = ledger.claim_next("w0", profile=WAV, prefer=SHA_B)
    assert claimed is not None and claimed.id == mine.id
    # decode-ahead passes over the content in hand
    assert ledger.next_queued(WAV, other_than=SHA_A) is None
    upcoming = ledger.next_queued(WAV)
    assert upcoming is not None and upcoming.id == older.id


def test_queued_jobs_take_the_new_profile_and_merge_where_it_has_a_job(opener: Opener) -> None:
    """A reload (or restart) with new output settings: this node's queued jobs
    are keyed by them; content that already has a job under them waits for that
    one, or gets its stems at once when it is done."""
    ledger = opener("host-a")
    done_input = add(ledger, "b-earlier.wav", 3)
    done = ledger.attach(done_input, SHA_B, NEW, "b-earlier.wav")
    claimed = ledger.claim_next("w0", profile=NEW)
    assert claimed is not None and claimed.id == done.id
    ledger.complete(claimed, done_input, "m/b-earlier")
    old_only = ledger.attach(add(ledger, "a.wav", 1), SHA_A, OLD, "a.wav")
    waiting = add(ledger, "b.wav", 2)
    merged = ledger.attach(waiting, SHA_B, OLD, "b.wav")

    # the periodic round leaves jobs of this model alone: it renders them as keyed
    assert rekey_to(ledger, NEW) == []
    moved = rekey_to(ledger, NEW, everything=True)  # new settings here

    assert ledger.get_job(old_only.id).profile == NEW.key
    assert ledger.get_job(old_only.id).params == NEW.params
    with pytest.raises(StateError):
        ledger.get_job(merged.id)  # merged into the job the new profile has
    ((record, job),) = moved
    assert record.id == waiting and job.id == done.id and job.state is JobState.DONE
    assert {r.id for r in ledger.inputs_of(done.id)} == {done_input, waiting}
    assert ledger.job_of_input(waiting).id == done.id  # the input's job, as it is now
    assert rekey_to(ledger, NEW, everything=True) == []  # nothing left to move
    again = ledger.claim_next("w0", profile=NEW)
    assert again is not None and again.id == old_only.id


def test_an_input_attached_while_its_job_completes_sees_it_done(
    postgres: PostgresServer,
) -> None:
    """Two hosts: one commits a job's completion (and reads the inputs waiting
    for copies) while the other attaches the same content. The attach must wait
    for the job's row: reading it as running just before the commit would leave
    the new input waiting for a job that already ended, served by no one."""
    import psycopg

    url = postgres.new_database()
    first = connect(Path("/a"), url, None, "host-a")
    second = connect(Path("/b"), url, None, "host-b")
    job = first.attach(add(first, "a.wav", 1), SHA_A, PROFILE, "a.wav")
    assert first.claim_next("w0", lease=60, profile=PROFILE) is not None
    late = add(second, "copy.wav", 2)
    attached: list[JobRecord] = []
    with psycopg.connect(url) as completing:  # host-a's completion, caught mid-commit
        completing.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job.id,))
        attach = threading.Thread(
            target=lambda: attached.append(second.attach(late, SHA_A, PROFILE, "copy.wav"))
        )
        attach.start()

        def blocked_or_done() -> bool:
            row = completing.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            ).fetchone()
            return bool(row and row[0]) or not attach.is_alive()

        wait_until(blocked_or_done, 10, "the attach to wait on a lock or end")
        assert attach.is_alive(), "attached while the job's completion held its row"
        completing.execute(
            "UPDATE jobs SET state = 'done', output_dir = 'm/a' WHERE id = %s", (job.id,)
        )
        completing.commit()
    attach.join(timeout=10)
    (seen,) = attached
    assert seen.state is JobState.DONE and seen.output_dir == "m/a"  # so it is served a copy


def test_a_completion_names_the_inputs_that_wait_for_copies(opener: Opener) -> None:
    ledger = opener("host-a")
    owner = add(ledger, "a.wav", 1)
    job = ledger.attach(owner, SHA_A, PROFILE, "a.wav")
    claimed = ledger.claim_next("w0", profile=PROFILE)
    assert claimed is not None
    waiting = add(ledger, "copy.wav", 2)
    ledger.attach(waiting, SHA_A, PROFILE, "copy.wav")
    published, copies = ledger.complete(claimed, owner, "m/a")
    assert published.id == job.id and published.state is JobState.DONE
    assert published.output_dir == "m/a"
    assert [record.id for record in copies] == [waiting]


def test_a_gone_hosts_jobs_of_other_settings_are_rendered_here_and_stay_here(
    postgres: PostgresServer,
) -> None:
    """A host of another model died with one job running and one queued: the
    live host takes both (the running one once its lease ran out, counted as
    lost), and a later host of the dead one's model leaves them alone: they are
    the live host's now."""
    url = postgres.new_database()
    dead = connect(Path("/d"), url, None, "dead-flac")
    wav = connect(Path("/w"), url, None, "live-wav")
    running = dead.attach(add(dead, "a.wav", 1), SHA_A, FLAC_B, "a.wav")
    queued = dead.attach(add(dead, "b.wav", 2), SHA_B, FLAC_B, "b.wav")
    held = dead.claim_next("w0", lease=0.2, profile=FLAC_B)
    assert held is not None and held.id == running.id
    dead.close()  # never reported: gone for any grace
    wait_until(
        lambda: rekey_to(wav, WAV_C) == [] and wav.counts()["running"] == 0,
        10,
        "the dead host's lease to run out and its jobs to be re-keyed",
    )
    assert {wav.get_job(running.id).profile, wav.get_job(queued.id).profile} == {WAV_C.key}
    assert wav.get_job(running.id).lost == 1
    assert {r.node for r in wav.inputs_of(running.id) + wav.inputs_of(queued.id)} == {"live-wav"}
    later = connect(Path("/f"), url, None, "later-flac")
    later.report_node("f", 1, 0.0, 0, [])
    wav.report_node("w", 1, 0.0, 0, [])
    assert rekey_to(later, FLAC_B) == []
    claimed = {job.id for job in iter(lambda: wav.claim_next("w0", profile=WAV_C), None)}
    assert claimed == {running.id, queued.id}


def test_a_late_holder_of_a_job_merged_away_has_lost_its_lease(
    postgres: PostgresServer,
) -> None:
    """A host that was away past its lease wakes up to find its job merged into
    the one another host's settings have for that content: its writes are
    refused as for any job taken over (LeaseLost), not as a missing job."""
    url = postgres.new_database()
    late = connect(Path("/l"), url, None, "late-flac")  # never reported: gone
    wav = connect(Path("/w"), url, None, "live-wav")
    held_input = add(late, "a.wav", 1)
    late.attach(held_input, SHA_A, FLAC_B, "a.wav")
    held = late.claim_next("w0", lease=0.2, profile=FLAC_B)
    assert held is not None
    done = wav.attach(add(wav, "a-again.wav", 2), SHA_A, WAV_C, "a-again.wav")
    claimed = wav.claim_next("w0", profile=WAV_C)
    assert claimed is not None and claimed.id == done.id
    wav.complete(claimed, done.owner_input or 0, "m/a")
    moved = wait_until(lambda: rekey_to(wav, WAV_C), 10, "the merge")
    assert [(record.id, job.id) for record, job in moved] == [(held_input, done.id)]
    with pytest.raises(LeaseLost):
        late.complete(held, held_input, "late/a")
    with pytest.raises(LeaseLost):
        late.fail(held, "late failure")


def test_re_keying_races_attaches_of_both_profiles_without_losing_an_input(
    postgres: PostgresServer,
) -> None:
    """A host re-keys a gone host's queue while the same contents are attached
    under the old settings (another connection of the gone host's kind) and the
    new ones: no attach fails, no re-key fails, and every input ends on a job
    of the new settings, one per content."""
    url = postgres.new_database()
    rekeying = connect(Path("/a"), url, None, "host-a")
    old_host = connect(Path("/b"), url, None, "host-b")  # never reported: gone
    new_host = connect(Path("/c"), url, None, "host-c")
    contents = [f"{n:064x}" for n in range(1, 61)]
    # each content dropped twice under the old settings: the second attach meets
    # the job the first made, while it is being re-keyed
    olds = [add(old_host, f"old{n}.wav", 1000 + n) for n in range(2 * len(contents))]
    news = [add(new_host, f"new{n}.wav", 3000 + n) for n in range(len(contents))]
    errors: list[BaseException] = []
    done = threading.Event()

    def attach_all(ledger: Ledger, inputs: list[int], key: Profile) -> None:
        try:
            for n, input_id in enumerate(inputs):
                ledger.attach(input_id, contents[n // (len(inputs) // len(contents))], key, "x")
        except BaseException as err:
            errors.append(err)

    def rekey_until_done() -> None:
        try:
            while not done.is_set():
                rekey_to(rekeying, WAV_C)
        except BaseException as err:
            errors.append(err)

    attachers = [
        threading.Thread(target=attach_all, args=(old_host, olds, FLAC_B)),
        threading.Thread(target=attach_all, args=(new_host, news, WAV_C)),
    ]
    rekeyer = threading.Thread(target=rekey_until_done)
    rekeyer.start()
    for thread in attachers:
        thread.start()
    for thread in attachers:
        thread.join(timeout=60)
    done.set()
    rekeyer.join(timeout=60)
    assert errors == []
    rekey_to(rekeying, WAV_C)
    for input_id in olds + news:
        job = rekeying.get_job(rekeying.get_input(input_id).job_id or 0)
        assert job.profile == WAV_C.key
    assert rekeying.counts()["queued"] == len(contents)


def test_a_deadlock_the_server_breaks_is_run_again_not_an_outage(
    postgres: PostgresServer,
) -> None:
    """PostgreSQL rolls one transaction of a lock cycle back. When it is the
    ledger's, the ledger runs it again: the database is there, and nothing may
    say it is unreachable (/ping would fail, workers would wait out an outage)."""
    import psycopg

    url = postgres.new_database()
    ledger = connect(Path("/a"), url, None, "host-a")
    first = ledger.attach(add(ledger, "a.wav", 1), SHA_A, PROFILE, "a.wav")
    second = ledger.attach(add(ledger, "b.wav", 2), SHA_B, PROFILE, "b.wav")
    held = {job.id: job.claim for job in iter(lambda: ledger.claim_next(profile=PROFILE), None)}
    assert sorted(held) == sorted([first.id, second.id])
    renewed: list[set[int]] = []
    with psycopg.connect(url) as other:
        # this session waits long before it looks for a cycle: the ledger's is the one
        # the server rolls back
        other.execute("SET deadlock_timeout = '10s'")
        other.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (second.id,))
        renewing = threading.Thread(target=lambda: renewed.append(ledger.renew(held, 30.0)))
        renewing.start()  # takes the first job's row, then waits for the second's

        def renewal_waits() -> bool:
            row = other.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            ).fetchone()
            return bool(row and row[0])

        wait_until(renewal_waits, 10, "the renewal to wait for the second job's row")
        other.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (first.id,))  # a cycle
        other.commit()
    renewing.join(timeout=30)
    assert renewed == [set()], "the renewal failed instead of running again"
    assert ledger.reachable


def test_inputs_left_waiting_on_an_ended_job_are_found_once_it_ended_a_while_ago(
    opener: Opener,
) -> None:
    """A crash between a job's completion and serving its copies leaves inputs
    attached to a done job: the sweep finds them, but only once the job ended
    long enough ago that no living host is still serving them."""
    ledger, gone = opener("host-a"), opener("host-b")  # host-b never reports: gone
    owner = add(ledger, "a.wav", 1)
    ledger.attach(owner, SHA_A, PROFILE, "a.wav")
    copy = add(gone, "copy.wav", 2)
    gone.attach(copy, SHA_A, PROFILE, "copy.wav")
    claimed = ledger.claim_next("w0", profile=PROFILE)
    assert claimed is not None
    published, copies = ledger.complete(claimed, owner, "m/a")
    assert [r.id for r in copies] == [copy]  # ... and the daemon died before serving it
    assert ledger.stranded_inputs(ended_before=600) == []
    ((record, job),) = ledger.stranded_inputs(ended_before=0)
    assert record.id == copy and job.id == published.id and job.state is JobState.DONE
    # taken for this node just now: a sweep that waits as long as the daemon's
    # (10 min) leaves it to the one serving it
    assert ledger.get_input(copy).node == "host-a"


def test_every_write_uses_the_databases_clock(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = two_hosts(postgres)
    first.attach(add(first, "a.wav"), SHA_A, PROFILE, "a.wav")
    held = first.claim_next("w0", lease=30, profile=PROFILE)
    assert held is not None
    # host-b's clock runs an hour ahead: it must not see host-a's lease as run out
    host_clock = time.time
    monkeypatch.setattr(time, "time", lambda: host_clock() + 3600)
    assert second.claim_next("w0", lease=30, profile=PROFILE) is None
    assert held.lease_until is not None and held.started_at is not None
    assert held.lease_until - held.started_at == pytest.approx(30.0)


def test_a_shared_ledger_knows_a_file_by_path_and_inode_not_device(
    postgres: PostgresServer,
) -> None:
    first, second = two_hosts(postgres)
    path = Path("/share/inbox/a.wav")
    assert first.add_input(path, "a.wav", FileStat(41, 5, 100, 7)) is not None
    # the same file on the share, as another host (or a remount) numbers it
    again = second.add_input(path, "a.wav", FileStat(63, 5, 100, 7))
    assert second.known_versions([(path, FileStat(63, 5, 100, 7))]) == {path}
    assert again is None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_both_backends_migrate_a_version_1_ledger(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The version 1 tables, made by hand, brought up to date by the migrations."""
    if backend == "sqlite":
        url = None
        raw = sqlite3.connect(tmp_path / "ledger.sqlite")
        run = raw.execute
        id_column = "INTEGER PRIMARY KEY"
    else:
        import psycopg

        url = request.getfixturevalue("postgres").new_database()
        raw = psycopg.connect(url, autocommit=True)
        run = raw.execute
        id_column = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    for statement in BASE_SCHEMA:
        run(statement.format(id=id_column))
    run("INSERT INTO meta (key, value) VALUES ('schema', '1')")
    run(
        "INSERT INTO inputs (path, relative, dev, ino, size, mtime_ns, state, detected_at, "
        "updated_at) VALUES ('/inbox/old.wav', 'old.wav', 1, 1, 100, 5, 'pending', 0, 0)"
    )
    raw.commit()
    raw.close()
    ledger = connect(tmp_path, url, None, "node")
    (record,) = ledger.pending_inputs()
    assert record.relative == "old.wav" and record.origin == "inbox"
    job = ledger.attach(record.id, SHA_A, PROFILE, "old.wav")
    claimed = ledger.claim_next("w0", lease=30, profile=PROFILE)
    assert claimed is not None and claimed.id == job.id and claimed.claim == 1
    ledger.close()


def test_an_unreachable_database_is_waited_out_by_those_who_wait() -> None:
    server = PostgresServer()  # its own: this test stops it
    try:
        url = server.new_database()
        ledger = connect(Path("/nonexistent"), url, None, "node")
        ledger.attach(add(ledger, "a.wav"), SHA_A, PROFILE, "a.wav")
        server.stop()
        with pytest.raises(LedgerUnavailable, match="PostgreSQL"):
            ledger.counts()  # a thread that does not wait: told at once
        assert not ledger.reachable
        result: list[object] = []

        def worker() -> None:
            with ledger.wait_here(lambda: True):
                result.append(ledger.claim_next("w0", lease=30, profile=PROFILE))

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive(), "the waiting thread gave up while the server was down"
        server.start()
        thread.join(timeout=30)
        assert not thread.is_alive()
        (claimed,) = result
        assert claimed is not None and ledger.reachable
        assert ledger.counts()["running"] == 1
        ledger.close()
    finally:
        server.close()


def test_a_wrong_database_name_is_a_config_error_naming_ledger_url(
    postgres: PostgresServer,
) -> None:
    from stemd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"ledger\.url.*does not exist"):
        connect(Path("/x"), postgres.url("no_such_db"), None, "node")


def test_a_ledger_no_one_shares_takes_on_what_an_earlier_node_id_left(tmp_path: Path) -> None:
    """SQLite is one daemon's: if its node id changed (state_dir/node lost), it
    still recovers the running jobs and hashes the pending inputs at once."""
    path = tmp_path / "ledger.sqlite"
    before = sqlite_ledger(path, "old-node")
    before.report_node("h", 1, 0.0, 0, [])
    before.attach(add(before, "a.wav", 1), SHA_A, PROFILE, "a.wav")
    pending = add(before, "b.wav", 2)
    assert before.claim_next("w0", lease=3600, profile=PROFILE) is not None
    before.close()
    after = sqlite_ledger(path, "new-node")
    assert after.recover(max_attempts=3) == (1, 0)
    assert [r.id for r in after.pending_inputs(stale_after=3600)] == [pending]


def test_a_host_frozen_inside_a_transaction_does_not_keep_its_job_from_a_takeover(
    postgres: PostgresServer,
) -> None:
    """A daemon stopped (SIGSTOP) between a statement and its commit holds row
    locks; the server ends its transaction, so the job can still be taken over."""
    from stemd.ledger.backends import IDLE_IN_TRANSACTION_S

    frozen, other = two_hosts(postgres)
    frozen.attach(add(frozen, "a.wav"), SHA_A, PROFILE, "a.wav")
    held = frozen.claim_next("w0", lease=0.5, profile=PROFILE)
    assert held is not None
    inside, thawed = threading.Event(), threading.Event()

    def freeze_mid_renewal() -> None:
        with contextlib.suppress(LedgerUnavailable), frozen._write() as db:
            db.execute("UPDATE jobs SET lease_until = lease_until WHERE id = ?", (held.id,))
            inside.set()
            thawed.wait(timeout=30)  # the process stands still, its transaction open

    thread = threading.Thread(target=freeze_mid_renewal)
    thread.start()
    try:
        assert inside.wait(timeout=10)
        taken = wait_until(
            lambda: other.claim_next("w0", lease=30, profile=PROFILE),
            IDLE_IN_TRANSACTION_S + 10,
            "a takeover",
        )
        assert taken.id == held.id and taken.lost == 1
    finally:
        thawed.set()
        thread.join(timeout=30)


def test_the_queue_running_empty_is_summed_up_once_per_batch(ledger: Ledger) -> None:
    assert ledger.claim_drained() == Drained(busy=False)  # a new ledger: the mark is set
    a = ledger.attach(add(ledger, "a.mp3", 1), SHA_A, PROFILE, "a.mp3")
    ledger.attach(add(ledger, "b.mp3", 2), SHA_B, PROFILE, "b.mp3")
    refused = add(ledger, "c.wav", 3)
    ledger.fail_input(refused, "not a readable audio file")
    first = ledger.claim_next(profile=PROFILE)
    assert first is not None and first.id == a.id
    ledger.complete(first, first.owner_input or 0, "m/a")
    assert ledger.claim_drained().busy  # b is still queued
    second = ledger.claim_next(profile=PROFILE)
    assert second is not None
    assert ledger.claim_drained().busy  # and now running
    ledger.fail(second, "cannot decode")
    summary = ledger.claim_drained()
    assert (summary.busy, summary.done, summary.failed) == (False, 1, 2)
    assert 0 <= summary.seconds < 60
    assert ledger.claim_drained() == Drained(busy=False)  # summed up once


def test_a_batch_two_hosts_ran_is_summed_up_by_one_of_them(postgres: PostgresServer) -> None:
    one, two = two_hosts(postgres)
    for host in (one, two):
        assert not host.claim_drained().busy
    one.attach(add(one, "a.mp3", 1), SHA_A, PROFILE, "a.mp3")
    job = two.claim_next(profile=PROFILE)
    assert job is not None
    two.complete(job, job.owner_input or 0, "m/a")
    results = []
    barrier = threading.Barrier(2)

    def claim(host: Ledger) -> None:
        barrier.wait(timeout=10)
        results.append(host.claim_drained())

    threads = [threading.Thread(target=claim, args=(host,)) for host in (one, two)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(r.done for r in results) == [0, 1]  # one summary, not two


def test_a_postgresql_session_limits_its_statements(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """No statement waits for ever (a lock behind a frozen host, a hung server): the
    session's statement_timeout ends it, and the ledger waits it out as unavailable."""
    ledger = connect(tmp_path, postgres.new_database(), None, "node")
    try:
        with ledger._read() as db:
            row = db.execute("SHOW statement_timeout").fetchone()
        assert row["statement_timeout"] == "1min"
    finally:
        ledger.close()


def due_urls(ledger: Ledger) -> list[str]:
    return sorted(due.url for due in ledger.due_callbacks())


def test_callbacks_are_due_once_per_end_of_the_job_and_per_input(ledger: Ledger) -> None:
    """The same content submitted twice with two callback URLs calls both, each
    once the input has what it waited for; a retried job's new end calls again."""
    first = ledger.add_input(
        Path("/u/1"), "uploads/a.wav", FileStat(1, 1, 9, 1), "http", "http://h/1"
    )
    second = ledger.add_input(
        Path("/u/2"), "uploads/b.wav", FileStat(1, 2, 9, 1), "http", "http://h/2"
    )
    assert first is not None and second is not None
    ledger.attach(first.id, SHA_A, PROFILE, "uploads/a.wav")
    job = ledger.attach(second.id, SHA_A, PROFILE, "uploads/b.wav")
    assert ledger.callbacks_of(job.id) == [(first.id, "http://h/1"), (second.id, "http://h/2")]
    assert due_urls(ledger) == []  # queued: nothing ended
    claimed = ledger.claim_next(profile=PROFILE)
    assert claimed is not None
    ledger.fail(claimed, "the test model fails", Fault.STEMD)
    failed = ledger.due_callbacks()
    assert [d.url for d in failed] == ["http://h/1", "http://h/2"]
    assert all(ledger.claim_callback(due) for due in failed)
    for due in failed:
        ledger.finish_callback(due)
    assert due_urls(ledger) == []

    # retried and done: a new end. The owner is published at once; the other
    # input waits for its copy, and is due once it has it
    assert ledger.retry_job(job.id)
    running = ledger.claim_next(profile=PROFILE)
    assert running is not None
    ledger.complete(running, first.id, "out/a")
    assert due_urls(ledger) == ["http://h/1"]
    ledger.finish_input(second.id, InputState.DUPLICATE, "out/b")
    done = ledger.due_callbacks()
    assert [d.url for d in done] == ["http://h/1", "http://h/2"]
    assert all(d.end == ledger.get_job(job.id).finished_at for d in done)
    assert all(ledger.claim_callback(d) for d in done)
    # claimed and not marked posted (a crash in between): this node, restarted, posts it
    assert due_urls(ledger) == ["http://h/1", "http://h/2"]
    ledger.finish_callback(done[0])
    ledger.release_callback(done[1])  # stopped before it was posted
    assert [d.input_id for d in ledger.due_callbacks()] == [second.id]


def test_one_host_of_two_posts_a_callback_and_a_gone_hosts_claim_is_taken_over(
    postgres: PostgresServer,
) -> None:
    a, b = two_hosts(postgres)
    try:
        for host in (a, b):
            host.report_node(host.node, 1, time.time(), 0, [])
        record = a.add_input(
            Path("/u/1"), "uploads/a.wav", FileStat(0, 1, 9, 1), "http", "http://h/"
        )
        assert record is not None
        a.attach(record.id, SHA_A, PROFILE, "uploads/a.wav")
        job = a.claim_next(profile=PROFILE)
        assert job is not None
        a.complete(job, record.id, "out/a")
        (due,) = b.due_callbacks(stale_after=60)
        assert a.claim_callback(due, stale_after=60)
        assert b.due_callbacks(stale_after=60) == []  # a live host holds it
        assert not b.claim_callback(due, stale_after=60)
        # a is gone (not heard from) before it marked the callback posted: b posts it
        time.sleep(0.3)
        b.report_node(b.node, 1, time.time(), 0, [])
        assert b.due_callbacks(stale_after=0.2) == [due]
        assert b.claim_callback(due, stale_after=0.2)
        b.finish_callback(due)
        assert a.due_callbacks() == b.due_callbacks() == []
        a.finish_callback(due)  # a late mark by the gone host changes nothing
        assert b.due_callbacks(stale_after=0.2) == []
    finally:
        a.close()
        b.close()


def test_an_input_given_a_url_after_its_job_ended_is_due_at_once(ledger: Ledger) -> None:
    input_id = add(ledger, "a.wav")
    ledger.attach(input_id, SHA_A, PROFILE, "a.wav")
    job = ledger.claim_next(profile=PROFILE)
    assert job is not None
    ledger.complete(job, input_id, "out/a")
    assert ledger.due_callbacks() == [] and ledger.callbacks_of(job.id) == []
    ledger.set_callback_url(input_id, "https://receiver.example/done")
    (due,) = ledger.due_callbacks()
    assert (due.input_id, due.job_id, due.source) == (input_id, job.id, "a.wav")
    assert ledger.claim_callback(due)
    ledger.finish_callback(due)
    assert ledger.due_callbacks() == [] and not ledger.claim_callback(due)
    ledger.set_callback_url(input_id, None)
    assert ledger.callbacks_of(job.id) == [] and ledger.due_callbacks() == []


def test_recent_jobs_by_a_piece_of_their_name_and_page_by_page(ledger: Ledger) -> None:
    names = ["Rock/Song.wav", "jazz/tune.wav", "rock/odd_100%\\.wav"]
    ids = [
        ledger.attach(add(ledger, name, n + 1), f"{n}" * 64, PROFILE, name).id
        for n, name in enumerate(names)
    ]

    def found(query: str | None = None, before: int | None = None, limit: int = 50) -> list[str]:
        return [j.source for j in ledger.recent_jobs(None, limit, query=query, before=before)]

    assert found("ROCK") == [names[2], names[0]]  # any case, newest first
    assert found("_100%\\") == [names[2]]  # LIKE's wildcards and escape are plain characters
    assert found("o_k") == [] and found("k%s") == []
    assert found(limit=2) == [names[2], names[1]]
    assert found(before=ids[1]) == [names[0]]
    assert found("rock", before=ids[2]) == [names[0]]
    assert [j.id for j in ledger.recent_jobs(JobState.QUEUED, 5, query="tune")] == [ids[1]]
