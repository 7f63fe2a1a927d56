"""The ledger's core: one backend's transactions, the schema brought up to date,
and patience with an unreachable database.

Each public operation (in inputs.py, jobs.py, reports.py) is one or a few
transactions that may simply run again. A thread that called `wait_here` waits
out an unreachable database (with backoff) instead of failing; other threads
get LedgerUnavailable at once.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, Self, TypeVar

from stemd.errors import StateError
from stemd.ledger.backends import Backend, Db
from stemd.ledger.records import (
    FileStat,
    InputState,
    JobState,
    LedgerConflict,
    LedgerUnavailable,
)
from stemd.ledger.schema import BASE_SCHEMA, MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger("stemd")

P = ParamSpec("P")
T = TypeVar("T")

# waits between tries while the database is unreachable
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 5.0
CONFLICT_RETRIES = 5  # deadlocks lost in a row before it counts as an outage

# A failure is current while an input of it is still failed: a failed job with
# such an input, or an input refused before it had a job.
CURRENT_FAILED_JOB = (
    f"jobs.state = '{JobState.FAILED.value}' AND EXISTS (SELECT 1 FROM inputs AS i "
    f"WHERE i.job_id = jobs.id AND i.state = '{InputState.FAILED.value}')"
)
FINISHED_INPUT_STATES = (
    InputState.PUBLISHED.value,
    InputState.DUPLICATE.value,
    InputState.SKIPPED.value,
    InputState.FAILED.value,
)


def patient(method: Callable[P, T]) -> Callable[P, T]:
    """Run the operation again after LedgerUnavailable, for as long as the
    calling thread's `wait_here` says to keep waiting."""

    @functools.wraps(method)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        ledger = args[0]
        assert isinstance(ledger, LedgerCore)
        delay = BACKOFF_FIRST_S
        conflicts = 0
        while True:
            try:
                result = method(*args, **kwargs)
            except LedgerUnavailable as err:
                if isinstance(err, LedgerConflict) and conflicts < CONFLICT_RETRIES:
                    # another writer won a deadlock: nothing is wrong with the database
                    conflicts += 1
                    time.sleep(random.uniform(0.0, 0.05 * conflicts))
                    continue
                if not ledger._wait_out(err, delay):
                    raise
                delay = min(BACKOFF_MAX_S, delay * 2)
                continue
            ledger._reached()
            return result

    return run


class Outage:
    """Since when the database has been unreachable (None: it is reachable), for
    every connection of one daemon: an outage is said once, and over once."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.lock = threading.Lock()


class LedgerCore:
    """Thread-safe access to one ledger (the backend serialises its connection)."""

    def __init__(self, backend: Backend, node: str = "", outage: Outage | None = None) -> None:
        """`outage`: shared with the connection this one was opened beside
        (`another_connection`), whose schema is already up to date."""
        self.backend = backend
        self.node = node  # this daemon, as inputs and leases name it
        self.where = backend.where
        self._local = threading.local()
        self._outage = outage or Outage()
        self._closed = threading.Event()
        if outage is None:
            self._create_or_migrate()

    def another_connection(self) -> Self:
        """The same ledger over a connection of its own (a thread whose calls must
        not queue behind the others'), sharing this one's outage. Raises
        LedgerUnavailable."""
        return type(self)(self.backend.reopen(), self.node, self._outage)

    @property
    def path(self) -> Path:
        """The SQLite file (messages and tests); a PostgreSQL ledger has none."""
        return Path(self.where)

    # -- reaching the database -------------------------------------------------

    @contextmanager
    def wait_here(self, keep_waiting: Callable[[], bool]) -> Iterator[None]:
        """In this thread, wait out an unreachable database while
        `keep_waiting()` is true (a worker: it has work in hand to save)."""
        previous = getattr(self._local, "keep_waiting", None)
        self._local.keep_waiting = keep_waiting
        try:
            yield
        finally:
            self._local.keep_waiting = previous

    @property
    def reachable(self) -> bool:
        """False from a failed attempt to reach the database until one succeeds."""
        return self._outage.since is None

    def _wait_out(self, err: LedgerUnavailable, delay: float) -> bool:
        keep_waiting: Callable[[], bool] | None = getattr(self._local, "keep_waiting", None)
        with self._outage.lock:
            if self._outage.since is None:
                self._outage.since = time.monotonic()
                log.error("%s; waiting for it and trying again", err)
        if keep_waiting is None or self._closed.is_set() or not keep_waiting():
            return False
        self._closed.wait(delay)
        return not self._closed.is_set() and keep_waiting()

    def _reached(self) -> None:
        if self._outage.since is None:
            return
        with self._outage.lock:
            since, self._outage.since = self._outage.since, None
        if since is not None:
            log.warning(
                "the ledger at %s is reachable again (after %.0fs)",
                self.where,
                time.monotonic() - since,
            )

    def _create_or_migrate(self) -> None:
        backend = self.backend
        with backend.transaction(write=True) as db:
            backend.lock_schema(db)
            fresh = not backend.has_table(db, "jobs")
            if fresh:
                for statement in BASE_SCHEMA:
                    db.execute(statement.format(id=backend.id_column))
                db.execute("INSERT INTO meta (key, value) VALUES ('schema', '1')")
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            version = int(row["value"]) if row else 1
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"{self.where}: the ledger is from a newer stemd (schema {version}, "
                    f"this one knows {SCHEMA_VERSION}); upgrade stemd"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    db.execute(statement)
                if not fresh:  # a new ledger's steps are not news
                    log.info("%s: ledger schema %d -> %d", self.where, step, step + 1)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    def close(self) -> None:
        self._closed.set()
        self.backend.close()

    def _dev(self, stat: FileStat) -> int:
        # a share's device number differs per host: a shared ledger stores none
        return 0 if self.backend.shared else stat.dev

    def _gone_before(self, now: float, stale_after: float) -> float:
        """Nodes last seen before this are gone (their inputs are taken on).
        A ledger no other daemon shares has no other node that could be alive:
        every one but this is gone (one whose node id was lost, say)."""
        return now - stale_after if self.backend.shared else math.inf

    def _read(self) -> Any:
        return self.backend.transaction(write=False)

    def _write(self) -> Any:
        return self.backend.transaction(write=True)

    def _supersede(self, db: Db, input_id: int, now: float) -> None:
        """Stems now exist for this input's path: earlier failures at that path
        (a bad file since replaced by good audio) are no longer current."""
        db.execute(
            "UPDATE inputs SET state = ?, updated_at = ? WHERE state = ? "
            "AND relative = (SELECT relative FROM inputs WHERE id = ?)",
            (InputState.DISMISSED.value, now, InputState.FAILED.value, input_id),
        )


def prefix_pattern(sha256: str | None) -> str:
    """A LIKE pattern for a content hash prefix (hex digits only), or for any."""
    return "%" if sha256 is None else sha256.lower() + "%"


def like_prefix(text: str) -> str:
    """`text` with LIKE's wildcards made literal (node ids are hex: none expected)."""
    return text.replace("%", "").replace("_", "")
