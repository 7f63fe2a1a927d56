"""The ledger: what stemd has seen and done, shared by its workers (and hosts).

records.py  states, rows and the allowed moves (no SQL)
schema.py   the tables and their migrations, run by both backends
backends.py SQLite in state_dir, or PostgreSQL (psycopg 3) for several hosts
core.py     one backend's transactions, migrations, patience with an unreachable database
inputs.py   the operations on inputs (files and uploads seen)
callbacks.py inputs' callback URLs, and which end of their job each was posted for
jobs.py     the operations on jobs: claims under leases, fenced writes, retries, recovery
reports.py  nodes, counts, queue positions, failures
store.py    `Ledger`: the three groups of operations over one core
statedir.py a daemon's own state_dir: its lock and its node id
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from stemd.errors import StateError
from stemd.ledger.backends import Backend, PostgresBackend, SqliteBackend
from stemd.ledger.callbacks import DueCallback
from stemd.ledger.records import (
    ALLOWED_TRANSITIONS,
    ORIGIN_HTTP,
    ORIGIN_INBOX,
    Drained,
    Fault,
    FileStat,
    InputRecord,
    InputState,
    InputTaken,
    JobRecord,
    JobState,
    LeaseLost,
    LedgerConflict,
    LedgerUnavailable,
    NodeRecord,
    TransitionError,
)
from stemd.ledger.schema import SCHEMA_VERSION
from stemd.ledger.statedir import LOCK_FILE, StateDirLock, node_id
from stemd.ledger.store import Ledger

LEDGER_FILE = "ledger.sqlite"  # inside state_dir, when ledger.url is not set

__all__ = [
    "ALLOWED_TRANSITIONS",
    "LEDGER_FILE",
    "LOCK_FILE",
    "ORIGIN_HTTP",
    "ORIGIN_INBOX",
    "SCHEMA_VERSION",
    "Drained",
    "DueCallback",
    "Fault",
    "FileStat",
    "InputRecord",
    "InputState",
    "InputTaken",
    "JobRecord",
    "JobState",
    "LeaseLost",
    "Ledger",
    "LedgerConflict",
    "LedgerUnavailable",
    "NodeRecord",
    "StateDirLock",
    "TransitionError",
    "connect",
    "node_id",
    "sqlite_ledger",
]


def sqlite_ledger(path: Path, node: str = "") -> Ledger:
    """The ledger in an SQLite file (state_dir/ledger.sqlite)."""
    return _open(SqliteBackend(path), node)


def _open(backend: Backend, node: str) -> Ledger:
    try:
        return Ledger(backend, node)
    except sqlite3.Error as err:
        backend.close()
        assert isinstance(backend, SqliteBackend)
        raise backend.explain(err) from None
    except LedgerConflict as err:
        backend.close()
        if isinstance(backend, SqliteBackend) and isinstance(err.__cause__, sqlite3.Error):
            # locked by another process as stemd opens it: say which file and what to do
            raise backend.explain(err.__cause__) from None
        raise
    except BaseException:
        backend.close()
        raise


def connect(state_dir: Path, url: str | None, password_file: Path | None, node: str = "") -> Ledger:
    """The configured ledger: SQLite in state_dir, or the PostgreSQL at `url`.
    LedgerUnavailable if that server cannot be reached now."""
    backend: Backend
    if url is None:
        backend = SqliteBackend(state_dir / LEDGER_FILE)
    else:
        password = None
        if password_file is not None:
            try:
                password = password_file.read_text().strip()
            except OSError as err:
                raise StateError(
                    f"ledger.password_file {password_file}: cannot read it ({err.strerror}); "
                    "it must be readable by the user stemd runs as"
                ) from None
        backend = PostgresBackend(url, password)
    return _open(backend, node)
