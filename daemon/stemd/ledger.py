"""The SQLite ledger: seen files, jobs and their states, the dedup index.

Two tables. `inputs` holds one row per file occurrence seen in the inbox, keyed by
(path, device, inode, size, mtime_ns): it is the stat cache that lets rescans skip
unchanged files without rehashing. `jobs` holds one row per (content sha256,
output profile): the unit of separation. Several inputs can point at one job
(copies of the same track); the first is the job's owner, whose name the stems
are published under; the others get the stems reused.

WAL mode lets `stemd status` read while the daemon writes; synchronous=FULL makes
each state change durable before we act on it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from stemd.errors import StateError

log = logging.getLogger("stemd")

SCHEMA_VERSION = 2
# Each step takes a ledger from version N to N + 1 (the key): older ledgers are
# brought up to date when opened, in one transaction.
MIGRATIONS: dict[int, str] = {
    # 2: inputs remember where they came from (the inbox, or an HTTP upload)
    1: "ALTER TABLE inputs ADD COLUMN origin TEXT NOT NULL DEFAULT 'inbox'",
}
LEDGER_FILE = "ledger.sqlite"  # inside state_dir
LOCK_FILE = "stemd.lock"  # inside state_dir: held by the one daemon using it
BUSY_TIMEOUT_S = 10.0
# the oldest queued job that is due: what the worker claims next
NEXT_DUE_JOB = "SELECT * FROM jobs WHERE state = ? AND not_before <= ? ORDER BY id LIMIT 1"


ORIGIN_INBOX = "inbox"
ORIGIN_HTTP = "http"  # uploaded to the HTTP API, spooled under state_dir/uploads


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


# running -> queued is an interruption (shutdown, crash recovery);
# failed -> queued is `stemd retry`.
ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.DONE, JobState.FAILED, JobState.QUEUED}),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.DONE: frozenset(),
}


class InputState(StrEnum):
    PENDING = "pending"  # seen and settled, not yet hashed
    ATTACHED = "attached"  # hashed; waits for its job
    PUBLISHED = "published"  # the job's stems were published under this name
    DUPLICATE = "duplicate"  # stems reused from an identical earlier track
    SKIPPED = "skipped"  # nothing written, by configuration (on_conflict/duplicates: skip)
    FAILED = "failed"
    # a failure off the list: `stemd dismiss`, or a later file at its path published
    DISMISSED = "dismissed"


# A failure is current while an input of it is still failed: a failed job with
# such an input, or an input refused before it had a job.
CURRENT_FAILED_JOB = (
    f"jobs.state = '{JobState.FAILED.value}' AND EXISTS (SELECT 1 FROM inputs AS i "
    f"WHERE i.job_id = jobs.id AND i.state = '{InputState.FAILED.value}')"
)


class TransitionError(StateError):
    def __init__(self, job_id: int, current: JobState, wanted: JobState) -> None:
        super().__init__(f"job {job_id}: cannot go from {current.value} to {wanted.value}")
        self.current = current
        self.wanted = wanted


@dataclass(frozen=True)
class FileStat:
    """A file version's identity: same path and FileStat means unchanged bytes."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileStat:
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


@dataclass(frozen=True)
class InputRecord:
    id: int
    path: Path
    relative: str
    stat: FileStat
    sha256: str | None
    state: InputState
    job_id: int | None
    output_dir: str | None
    error: str | None
    disposed: bool
    origin: str = ORIGIN_INBOX


@dataclass(frozen=True)
class JobRecord:
    id: int
    sha256: str
    profile: str
    state: JobState
    attempts: int
    error: str | None
    source: str
    owner_input: int | None
    output_dir: str | None
    progress: float
    not_before: float
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL,
    profile TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    source TEXT NOT NULL,
    owner_input INTEGER,
    output_dir TEXT,
    progress REAL NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    UNIQUE (sha256, profile)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, not_before);
CREATE TABLE IF NOT EXISTS inputs (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    relative TEXT NOT NULL,
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT,
    state TEXT NOT NULL,
    job_id INTEGER REFERENCES jobs (id),
    output_dir TEXT,
    error TEXT,
    disposed INTEGER NOT NULL DEFAULT 0,
    detected_at REAL NOT NULL,
    origin TEXT NOT NULL DEFAULT 'inbox',
    updated_at REAL NOT NULL,
    UNIQUE (path, dev, ino, size, mtime_ns)
);
CREATE INDEX IF NOT EXISTS inputs_by_state ON inputs (state);
CREATE INDEX IF NOT EXISTS inputs_by_job ON inputs (job_id);
"""


class StateDirLock:
    """One daemon per state_dir: an flock on state_dir/stemd.lock, held until exit.

    SQLite alone would let two daemons share the ledger and claim each other's
    jobs. The kernel drops an flock when its holder dies, so a crash never
    leaves a stale lock behind. `stemd status` and `stemd retry` do not take it.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise StateError(
                f"state_dir {state_dir} is not writable ({err.strerror}): stemd keeps its "
                f"ledger there. Make it writable by uid {os.geteuid()} (the user stemd runs "
                "as), or set state_dir to a folder that is."
            ) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateError(f"{self.path}: cannot lock it ({err.strerror})") from None
            raise StateError(
                f"state_dir {state_dir} is in use by another stemd (pid {holder}). "
                "Stop that one first, or give this one its own state_dir."
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


class Ledger:
    """Thread-safe access to one ledger file (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._create_or_migrate()
        except sqlite3.OperationalError as err:
            if "locked" in str(err) or "busy" in str(err):
                raise StateError(
                    f"{path}: the ledger is locked: another process held a write lock on it "
                    f"for over {BUSY_TIMEOUT_S:g}s ({err}). Find it with `fuser {path}` and "
                    "stop it (an sqlite3 shell left open in a transaction?), then start stemd."
                ) from None
            raise StateError(
                f"{path}: cannot open the ledger ({err}). Check that state_dir is writable "
                "and not full."
            ) from None
        except sqlite3.DatabaseError as err:
            raise StateError(
                f"{path}: cannot open the ledger ({err}). If the file is damaged, stop stemd, "
                "move it aside and start again: inputs still in the inbox are detected anew."
            ) from None
        except OSError as err:
            raise StateError(f"{path}: cannot create the ledger ({err.strerror})") from None

    def _create_or_migrate(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            fresh = (
                db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'"
                ).fetchone()
                is None
            )
            if fresh:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
            else:
                row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                version = int(row[0]) if row else 1
                if version > SCHEMA_VERSION:
                    raise StateError(
                        f"{self.path}: the ledger is from a newer stemd (schema {version}, "
                        f"this one knows {SCHEMA_VERSION}); upgrade stemd"
                    )
                for step in range(version, SCHEMA_VERSION):
                    db.execute(MIGRATIONS[step])
                    log.info("%s: ledger schema %d -> %d", self.path, step, step + 1)
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)",
                    (str(SCHEMA_VERSION),),
                )
        except BaseException:
            db.rollback()
            raise
        db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One immediate write transaction, committed durably or rolled back."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.rollback()
                raise
            else:
                self._db.commit()

    # -- inputs -------------------------------------------------------------

    def known(self, path: Path, stat: FileStat) -> InputRecord | None:
        """The row for exactly this file version, if it was seen before."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM inputs WHERE path = ? AND dev = ? AND ino = ? AND size = ? "
                "AND mtime_ns = ?",
                (str(path), stat.dev, stat.ino, stat.size, stat.mtime_ns),
            ).fetchone()
        return _input(row) if row else None

    def add_input(
        self, path: Path, relative: str, stat: FileStat, origin: str = ORIGIN_INBOX
    ) -> InputRecord | None:
        """Register a settled file. None if this exact version is already known."""
        now = time.time()
        with self._tx() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO inputs (path, relative, dev, ino, size, mtime_ns, state, "
                "detected_at, updated_at, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    str(path),
                    relative,
                    stat.dev,
                    stat.ino,
                    stat.size,
                    stat.mtime_ns,
                    InputState.PENDING.value,
                    now,
                    now,
                    origin,
                ),
            )
            if cursor.rowcount == 0:
                return None
            row = db.execute("SELECT * FROM inputs WHERE id = ?", (cursor.lastrowid,)).fetchone()
        return _input(row)

    def pending_inputs(self, limit: int = 100) -> list[InputRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM inputs WHERE state = ? ORDER BY id LIMIT ?",
                (InputState.PENDING.value, limit),
            ).fetchall()
        return [_input(r) for r in rows]

    def get_input(self, input_id: int) -> InputRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM inputs WHERE id = ?", (input_id,)).fetchone()
        if row is None:
            raise StateError(f"input {input_id} is not in the ledger")
        return _input(row)

    def inputs_of(self, job_id: int) -> list[InputRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM inputs WHERE job_id = ? ORDER BY id", (job_id,)
            ).fetchall()
        return [_input(r) for r in rows]

    def fail_input(self, input_id: int, error: str) -> None:
        self.finish_input(input_id, InputState.FAILED, None, error)

    def finish_input(
        self, input_id: int, state: InputState, output_dir: str | None, error: str | None = None
    ) -> None:
        """Set an input's end state; `output_dir` None keeps what was recorded."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE inputs SET state = ?, output_dir = coalesce(?, output_dir), error = ?, "
                "updated_at = ? WHERE id = ?",
                (state.value, output_dir, error, now, input_id),
            )
            if state in (InputState.PUBLISHED, InputState.DUPLICATE):
                self._supersede(db, input_id, now)

    def _supersede(self, db: sqlite3.Connection, input_id: int, now: float) -> None:
        """Stems now exist for this input's path: earlier failures at that path
        (a bad file since replaced by good audio) are no longer current."""
        db.execute(
            "UPDATE inputs SET state = ?, updated_at = ? WHERE state = ? "
            "AND relative = (SELECT relative FROM inputs WHERE id = ?)",
            (InputState.DISMISSED.value, now, InputState.FAILED.value, input_id),
        )

    def mark_disposed(self, input_id: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE inputs SET disposed = 1, updated_at = ? WHERE id = ?",
                (time.time(), input_id),
            )

    def undisposed_inputs(self) -> list[InputRecord]:
        """Finished inputs whose source was not yet kept/moved/deleted (crash in between)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM inputs WHERE disposed = 0 AND state IN (?, ?, ?, ?)",
                (
                    InputState.PUBLISHED.value,
                    InputState.DUPLICATE.value,
                    InputState.SKIPPED.value,
                    InputState.FAILED.value,
                ),
            ).fetchall()
        return [_input(r) for r in rows]

    # -- jobs ---------------------------------------------------------------

    def attach(self, input_id: int, sha256: str, profile: str, source: str) -> JobRecord:
        """Record the input's hash and attach it to the job for (sha256, profile).

        Creates the job (queued, this input its owner) when the key is new.
        """
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO jobs (sha256, profile, state, source, owner_input, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (sha256, profile, JobState.QUEUED.value, source, input_id, now),
            )
            job = db.execute(
                "SELECT * FROM jobs WHERE sha256 = ? AND profile = ?", (sha256, profile)
            ).fetchone()
            db.execute(
                "UPDATE inputs SET sha256 = ?, job_id = ?, state = ?, updated_at = ? WHERE id = ?",
                (sha256, job["id"], InputState.ATTACHED.value, now, input_id),
            )
        return _job(job)

    def get_job(self, job_id: int) -> JobRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise StateError(f"job {job_id} is not in the ledger")
        return _job(row)

    def next_queued(self) -> JobRecord | None:
        """The job `claim_next` would take now, left unclaimed."""
        with self._lock:
            row = self._db.execute(NEXT_DUE_JOB, (JobState.QUEUED.value, time.time())).fetchone()
        return _job(row) if row else None

    def claim_next(self, now: float | None = None) -> JobRecord | None:
        """Take the oldest queued job that is due: queued -> running, attempts + 1."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute(NEXT_DUE_JOB, (JobState.QUEUED.value, now)).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, progress = 0, "
                "started_at = ? WHERE id = ?",
                (JobState.RUNNING.value, now, row["id"]),
            )
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
        return _job(row)

    def _transition(
        self, db: sqlite3.Connection, job_id: int, wanted: JobState, **fields: object
    ) -> None:
        row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise StateError(f"job {job_id} is not in the ledger")
        current = JobState(row["state"])
        if wanted not in ALLOWED_TRANSITIONS[current]:
            raise TransitionError(job_id, current, wanted)
        assignments = ", ".join(f"{name} = ?" for name in ("state", *fields))
        db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ?",
            (wanted.value, *fields.values(), job_id),
        )

    def set_progress(self, job_id: int, fraction: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (fraction, job_id))

    def complete(self, job_id: int, owner_input: int, output_dir: str) -> None:
        """running -> done, and the owner input published, in one transaction."""
        now = time.time()
        with self._tx() as db:
            self._transition(
                db,
                job_id,
                JobState.DONE,
                output_dir=output_dir,
                progress=1.0,
                error=None,
                finished_at=now,
                owner_input=owner_input,
            )
            db.execute(
                "UPDATE inputs SET state = ?, output_dir = ?, updated_at = ? WHERE id = ?",
                (InputState.PUBLISHED.value, output_dir, now, owner_input),
            )
            self._supersede(db, owner_input, now)

    def requeue(self, job_id: int, error: str | None, delay: float, count_attempt: bool) -> None:
        """running -> queued: interrupted, or failed with attempts left (after `delay`)."""
        with self._tx() as db:
            adjust = 0 if count_attempt else 1
            self._transition(
                db,
                job_id,
                JobState.QUEUED,
                error=error,
                not_before=time.time() + delay,
                progress=0.0,
            )
            db.execute("UPDATE jobs SET attempts = attempts - ? WHERE id = ?", (adjust, job_id))

    def fail(self, job_id: int, error: str) -> list[InputRecord]:
        """-> failed, with the reason; every waiting input fails with it. Returns them."""
        now = time.time()
        with self._tx() as db:
            self._transition(db, job_id, JobState.FAILED, error=error, finished_at=now)
            db.execute(
                "UPDATE inputs SET state = ?, error = ?, updated_at = ? "
                "WHERE job_id = ? AND state = ?",
                (InputState.FAILED.value, error, now, job_id, InputState.ATTACHED.value),
            )
            rows = db.execute(
                "SELECT * FROM inputs WHERE job_id = ? AND state = ? AND disposed = 0",
                (job_id, InputState.FAILED.value),
            ).fetchall()
        return [_input(r) for r in rows]

    def retry(self, sha256: str | None = None) -> int:
        """failed -> queued for one content hash (any prefix of 6+ digits) or all,
        among the current failures (not dismissed ones).

        Attempts start over. Returns how many jobs were requeued.
        """
        return self._retry_where(
            f"{CURRENT_FAILED_JOB} AND sha256 LIKE ?", (_prefix_pattern(sha256),)
        )

    def _retry_where(self, condition: str, params: tuple[object, ...]) -> int:
        now = time.time()
        with self._tx() as db:
            rows = db.execute(f"SELECT id FROM jobs WHERE {condition}", params).fetchall()
            for row in rows:
                self._transition(
                    db, row["id"], JobState.QUEUED, attempts=0, not_before=0.0, error=None
                )
                db.execute(
                    "UPDATE inputs SET state = ?, error = NULL, disposed = 0, updated_at = ? "
                    "WHERE job_id = ? AND state = ?",
                    (InputState.ATTACHED.value, now, row["id"], InputState.FAILED.value),
                )
        return len(rows)

    def dismiss(self, sha256: str | None = None) -> int:
        """Take current failures off the list: those of one content hash (any
        prefix of 6+ digits), or all with None. Files and stems are untouched; the
        same bytes dropped again fail again at once (`retry` tries them again).
        Returns how many failures (as `failed_report` lists them) were dismissed."""
        pattern = _prefix_pattern(sha256)
        now = time.time()
        with self._tx() as db:
            current = f"SELECT id FROM jobs WHERE {CURRENT_FAILED_JOB} AND sha256 LIKE ?"
            jobs = db.execute(f"SELECT count(*) FROM ({current})", (pattern,)).fetchone()[0]
            db.execute(  # the failed inputs of those jobs
                "UPDATE inputs SET state = ?, updated_at = ? "
                f"WHERE state = ? AND job_id IN ({current})",
                (InputState.DISMISSED.value, now, InputState.FAILED.value, pattern),
            )
            refused = db.execute(  # inputs refused before they had a job
                "UPDATE inputs SET state = ?, updated_at = ? WHERE state = ? "
                "AND job_id IS NULL AND coalesce(sha256, '') LIKE ?",
                (InputState.DISMISSED.value, now, InputState.FAILED.value, pattern),
            ).rowcount
        return int(jobs) + refused

    def recover(self, max_attempts: int) -> tuple[int, int]:
        """At startup: jobs left running by a crash go back to queued (the attempt
        counts), or to failed when that was their last. Returns (requeued, failed)."""
        now = time.time()
        requeued = failed = 0
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, attempts FROM jobs WHERE state = ?", (JobState.RUNNING.value,)
            ).fetchall()
            for row in rows:
                if row["attempts"] >= max_attempts:
                    reason = f"interrupted {row['attempts']} times (a crash while separating?)"
                    self._transition(db, row["id"], JobState.FAILED, error=reason, finished_at=now)
                    db.execute(
                        "UPDATE inputs SET state = ?, error = ? WHERE job_id = ? AND state = ?",
                        (InputState.FAILED.value, reason, row["id"], InputState.ATTACHED.value),
                    )
                    failed += 1
                else:
                    self._transition(db, row["id"], JobState.QUEUED, progress=0.0)
                    requeued += 1
        return requeued, failed

    # -- reporting ----------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT state, count(*) AS n FROM jobs WHERE state != '{JobState.FAILED.value}' "
                f"OR {CURRENT_FAILED_JOB} GROUP BY state"
            )
            counts = {state.value: 0 for state in JobState}
            for row in rows:
                counts[row["state"]] = row["n"]
            # inputs refused before they had a job (too big, unreadable) count as failed
            orphan = self._db.execute(
                "SELECT count(*) FROM inputs WHERE state = ? AND job_id IS NULL",
                (InputState.FAILED.value,),
            ).fetchone()[0]
            # settled files the worker has not hashed yet (it hashes between jobs)
            # are waiting too: a user counts them as queued
            pending = self.count_inputs(InputState.PENDING)
        counts[JobState.FAILED.value] += orphan
        counts[JobState.QUEUED.value] += pending
        return counts

    def count_inputs(self, state: InputState) -> int:
        """How many inputs are in `state`: DUPLICATE are the copies served from
        stems that existed, PENDING those settled but not hashed yet."""
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM inputs WHERE state = ?", (state.value,)
            ).fetchone()
        return int(row[0])

    def set_settling(self, count: int, pid: int) -> None:
        """The running daemon's count of files still being written or settling
        (they are in its memory, not yet inputs), for `stemd status`. Advisory:
        a ledger that cannot take the write (a full disk) loses only this."""
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('settling', ?)",
                    (json.dumps({"count": count, "pid": pid}),),
                )
        except sqlite3.Error as err:
            log.warning("%s: cannot record the settling count: %s", self.path, err)

    def settling(self) -> tuple[int, int]:
        """(count, pid of the daemon that reported it); (0, 0) if never reported."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'settling'").fetchone()
        if row is None:
            return 0, 0
        value = json.loads(row[0])
        return int(value["count"]), int(value["pid"])

    def uploads_in_use(self) -> set[Path]:
        """Spool files of uploads that may still be read: not yet separated, or
        failed (a retry reads them again)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT path FROM inputs WHERE origin = ? AND state IN (?, ?, ?)",
                (
                    ORIGIN_HTTP,
                    InputState.PENDING.value,
                    InputState.ATTACHED.value,
                    InputState.FAILED.value,
                ),
            ).fetchall()
        return {Path(row[0]) for row in rows}

    def find_job(self, sha256: str, profile: str) -> JobRecord | None:
        """The job for this content under this output profile, if there is one."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM jobs WHERE sha256 = ? AND profile = ?", (sha256, profile)
            ).fetchone()
        return _job(row) if row else None

    def queue_position(self, job: JobRecord) -> int | None:
        """1 for the job the worker takes next (among those due), None unless queued."""
        if job.state is not JobState.QUEUED:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM jobs WHERE state = ? AND (not_before < ? "
                "OR (not_before = ? AND id < ?))",
                (JobState.QUEUED.value, job.not_before, job.not_before, job.id),
            ).fetchone()
        return int(row[0]) + 1

    def recent_jobs(self, state: JobState | None = None, limit: int = 50) -> list[JobRecord]:
        """The newest jobs first, all or in one state."""
        if state is not None:
            return self.jobs_in(state, limit)
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
            return [_job(r) for r in rows.fetchall()]

    def retry_job(self, job_id: int) -> bool:
        """One failed job back to the queue, attempts from zero. False if it is
        not failed (done, queued or running already)."""
        job = self.get_job(job_id)
        if job.state is not JobState.FAILED:
            return False
        return self._retry_where("jobs.id = ?", (job_id,)) > 0

    def jobs_in(self, state: JobState, limit: int = 50) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state = ? ORDER BY id DESC LIMIT ?",
                (state.value, limit),
            ).fetchall()
        return [_job(r) for r in rows]

    def failed_report(self, limit: int = 50) -> list[dict[str, object]]:
        """Recent current failures: failed jobs, and inputs refused before hashing."""
        with self._lock:
            rows = self._db.execute(
                # a job under the name of its first input while that one is still
                # failed, else of its latest failed one (the first may have been
                # replaced by good audio since)
                "SELECT coalesce("
                "(SELECT relative FROM inputs AS i WHERE i.id = jobs.owner_input "
                f"AND i.state = '{InputState.FAILED.value}'), "
                "(SELECT relative FROM inputs AS i WHERE i.job_id = jobs.id "
                f"AND i.state = '{InputState.FAILED.value}' ORDER BY i.id DESC LIMIT 1)), "
                "sha256, error, attempts, finished_at AS t FROM jobs "
                f"WHERE {CURRENT_FAILED_JOB} "
                "UNION ALL SELECT relative, sha256, error, 0, updated_at FROM inputs "
                "WHERE state = ? AND job_id IS NULL ORDER BY t DESC LIMIT ?",
                (InputState.FAILED.value, limit),
            ).fetchall()
        return [{"source": r[0], "sha256": r[1], "error": r[2], "attempts": r[3]} for r in rows]


def _prefix_pattern(sha256: str | None) -> str:
    """A LIKE pattern for a content hash prefix (hex digits only), or for any."""
    return "%" if sha256 is None else sha256.lower() + "%"


def _input(row: sqlite3.Row) -> InputRecord:
    return InputRecord(
        id=row["id"],
        path=Path(row["path"]),
        relative=row["relative"],
        stat=FileStat(row["dev"], row["ino"], row["size"], row["mtime_ns"]),
        sha256=row["sha256"],
        state=InputState(row["state"]),
        job_id=row["job_id"],
        output_dir=row["output_dir"],
        error=row["error"],
        disposed=bool(row["disposed"]),
        origin=row["origin"],
    )


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        sha256=row["sha256"],
        profile=row["profile"],
        state=JobState(row["state"]),
        attempts=row["attempts"],
        error=row["error"],
        source=row["source"],
        owner_input=row["owner_input"],
        output_dir=row["output_dir"],
        progress=row["progress"],
        not_before=row["not_before"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )
