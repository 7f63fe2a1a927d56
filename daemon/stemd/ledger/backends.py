"""Where the ledger lives: an SQLite file in state_dir, or a PostgreSQL database.

A backend hands out transactions on one connection (behind a lock: the
daemon's threads take turns) and knows its dialect's few differences: the id
column, row locks, the clock, and how to tell "unreachable" from a bad query.
The SQL itself is written once, with `?` placeholders, in store.py.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from stemd.errors import ConfigError, StateError
from stemd.ledger.records import LedgerConflict, LedgerUnavailable

log = logging.getLogger("stemd")

BUSY_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5
# A daemon frozen (SIGSTOP, a suspended VM) in the middle of one of its short
# transactions would keep that transaction's row locks: no other host could take
# its jobs over (SKIP LOCKED skips them), however long ago its leases ran out.
# The server ends such a transaction after this long, and its locks with it.
IDLE_IN_TRANSACTION_S = 5
# A network that drops the server's packets without a word would leave a query
# waiting forever, every thread queued behind the one connection's lock: TCP
# keepalives and a user timeout end such a connection within about 30 s (it is then
# LedgerUnavailable, waited out), and no statement runs longer than a minute on a
# server that works (a lock behind a frozen host). A server that hangs but whose
# kernel still answers TCP is not caught by these: its callers wait, and the HTTP
# server keeps them off its event loop.
STATEMENT_TIMEOUT_S = 60
TCP_USER_TIMEOUT_MS = 30_000
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
# one number for the advisory lock that serialises schema changes between
# daemons starting at once against one PostgreSQL database
SCHEMA_LOCK_KEY = 0x5354454D44  # "STEMD"


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Db(Protocol):
    """A connection inside a transaction: rows come back as mappings."""

    def execute(self, sql: str, params: Any = (), /) -> Cursor: ...


class Backend(Protocol):
    kind: str  # "sqlite" or "postgresql"
    where: str  # for messages: the file, or the URL without its password
    shared: bool  # other daemons may use it (device numbers are not compared)
    id_column: str
    lock_rows: str  # appended to a SELECT that will update what it read
    skip_locked: str  # ... and skips rows other transactions hold

    @contextmanager
    def transaction(self, write: bool) -> Iterator[Db]: ...

    def has_table(self, db: Db, name: str) -> bool: ...

    def now(self, db: Db) -> float: ...

    def lock_schema(self, db: Db) -> None: ...

    def lock_content(self, db: Db, sha256: str) -> None:
        """Until this transaction ends, no other takes the jobs of this content
        (attach and re-key), so neither finds the other's key half-changed."""
        ...

    def reopen(self) -> Backend:
        """Another connection to the same database."""
        ...

    def close(self) -> None: ...


class SqliteBackend:
    """One file in state_dir, one daemon. WAL lets `stemd status` read while
    the daemon writes; synchronous=FULL makes each change durable before we act
    on it; BEGIN IMMEDIATE takes the write lock up front."""

    kind = "sqlite"
    shared = False
    id_column = "INTEGER PRIMARY KEY"
    lock_rows = ""  # the write lock is the whole file's, taken at BEGIN
    skip_locked = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as err:
            raise self.explain(err) from None
        except OSError as err:
            raise StateError(f"{path}: cannot create the ledger ({err.strerror})") from None

    def explain(self, err: sqlite3.Error) -> StateError:
        path = self.path
        if isinstance(err, sqlite3.OperationalError) and (
            "locked" in str(err) or "busy" in str(err)
        ):
            return StateError(
                f"{path}: the ledger is locked: another process held a write lock on it "
                f"for over {BUSY_TIMEOUT_S:g}s ({err}). Find it with `fuser {path}` and "
                "stop it (an sqlite3 shell left open in a transaction?), then start stemd."
            )
        if isinstance(err, sqlite3.OperationalError):
            return StateError(
                f"{path}: cannot open the ledger ({err}). Check that state_dir is writable "
                "and not full."
            )
        return StateError(
            f"{path}: cannot open the ledger ({err}). If the file is damaged, stop stemd, "
            "move it aside and start again: inputs still in the inbox are detected anew."
        )

    @contextmanager
    def transaction(self, write: bool) -> Iterator[Db]:
        with self._lock:
            if not write:
                yield self._db
                return
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as err:
                # another connection (this daemon has two: its work's and its
                # liveness thread's, and `stemd` commands) held the write lock
                # past the busy timeout: run it again, then wait it out
                if "locked" in str(err) or "busy" in str(err):
                    raise LedgerConflict(f"{self.path}: {err}") from err
                raise
            try:
                yield self._db
            except BaseException:
                self._db.rollback()
                raise
            else:
                self._db.commit()

    def has_table(self, db: Db, name: str) -> bool:
        row = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None

    def now(self, db: Db) -> float:
        return time.time()  # one host: its clock is the ledger's

    def reopen(self) -> SqliteBackend:
        return SqliteBackend(self.path)

    def lock_content(self, db: Db, sha256: str) -> None:
        pass  # BEGIN IMMEDIATE took the whole file's write lock

    def lock_schema(self, db: Db) -> None:
        pass  # BEGIN IMMEDIATE holds the file's write lock already

    def close(self) -> None:
        with self._lock:
            self._db.close()


def redact(url: str) -> str:
    """The URL as it may be logged: any password replaced."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


# SQLSTATEs of a transaction the server rolled back to let others go on
_CONFLICTS = ("40P01", "40001")  # deadlock detected, serialization failure

# libpq's words for a server that is there but will not have us: waiting does
# not help, the configuration must change
_FATAL_CONNECT = (
    "password authentication failed",
    "no password supplied",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "invalid connection option",
    "invalid URI",
    "invalid integer value",
)


def psycopg_sql(sql: str) -> str:
    """SQLite's `?` placeholders as psycopg's `%s`, outside quoted literals and
    identifiers only (`'?'` stays a question mark); every `%` doubled, since psycopg
    reads them inside literals too. `''` in a literal closes and reopens it: the
    same state after both."""
    out: list[str] = []
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "?":
            out.append("%s")
            continue
        out.append("%%" if ch == "%" else ch)
    return "".join(out)


class _PgDb:
    """`?` placeholders as psycopg's `%s` (psycopg_sql)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> Cursor:
        cursor: Cursor = self._conn.execute(psycopg_sql(sql), tuple(params))
        return cursor


class PostgresBackend:
    """A database several daemons share (psycopg 3). One connection, taken in
    turns; a broken one is replaced on the next transaction. Every failure to
    reach the server is LedgerUnavailable, which the ledger waits out."""

    kind = "postgresql"
    shared = True
    id_column = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    lock_rows = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, password: str | None) -> None:
        try:
            import psycopg
        except ImportError:  # pragma: no cover - a dependency; a broken install
            raise ConfigError.single(
                "config",
                "ledger.url",
                "a PostgreSQL URL, but psycopg is not installed: pip install 'psycopg[binary]'",
            ) from None
        self._psycopg = psycopg
        self.url = url
        self.where = redact(url)
        self._password = password
        self._lock = threading.RLock()
        self._conn: Any = None
        self._connect()

    def _connect(self) -> None:
        psycopg = self._psycopg
        from psycopg.rows import dict_row

        extra: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_S}s "
            f"-c statement_timeout={STATEMENT_TIMEOUT_S}s",
            "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
            **KEEPALIVES,
        }
        if self._password is not None:
            extra["password"] = self._password
        try:
            self._conn = psycopg.connect(
                self.url, autocommit=True, row_factory=dict_row, application_name="stemd", **extra
            )
        except psycopg.ProgrammingError as err:  # a malformed URL
            raise ConfigError.single("config", "ledger.url", f"{self.where}: {err}") from None
        except psycopg.OperationalError as err:
            text = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            if any(words in str(err) for words in _FATAL_CONNECT):
                raise ConfigError.single(
                    "config",
                    "ledger.url",
                    f"{self.where}: the server refused stemd: {text}. Check the "
                    "role, database and password (ledger.password_file) as the README's "
                    '"More than one machine" sets them up.',
                ) from None
            raise LedgerUnavailable(f"PostgreSQL at {self.where} is unreachable: {text}") from None

    @contextmanager
    def transaction(self, write: bool) -> Iterator[Db]:
        psycopg = self._psycopg
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._connect()
            try:
                if write:
                    with self._conn.transaction():
                        yield _PgDb(self._conn)
                else:
                    yield _PgDb(self._conn)
            except psycopg.Error as err:
                # the server ended the session (restarted; or our transaction sat
                # idle past IDLE_IN_TRANSACTION_S while this process was frozen)
                if self._conn.broken or self._conn.closed:
                    self._conn.close()
                    self._conn = None
                    raise LedgerUnavailable(
                        f"lost the connection to PostgreSQL at {self.where}: "
                        f"{str(err).strip() or type(err).__name__}"
                    ) from None
                if getattr(err, "sqlstate", None) in _CONFLICTS:
                    # the server rolled this transaction back to break a deadlock (or a
                    # serialization failure): the database is there; run it again
                    raise LedgerConflict(f"PostgreSQL at {self.where}: {err}") from None
                if not isinstance(err, psycopg.OperationalError | psycopg.InterfaceError):
                    raise  # a mistake in our SQL: not the database's absence
                # the connection failed mid-transaction (rolled back): the server
                # is away or going away
                raise LedgerUnavailable(f"PostgreSQL at {self.where}: {err}") from None

    def has_table(self, db: Db, name: str) -> bool:
        row = db.execute("SELECT to_regclass(?) IS NOT NULL AS present", (name,)).fetchone()
        return bool(row["present"])

    def now(self, db: Db) -> float:
        # the server's clock, so that hosts whose clocks disagree agree on leases
        row = db.execute("SELECT extract(epoch FROM clock_timestamp())::float8 AS now").fetchone()
        return float(row["now"])

    def reopen(self) -> PostgresBackend:
        return PostgresBackend(self.url, self._password)

    def lock_content(self, db: Db, sha256: str) -> None:
        # a transaction-scoped advisory lock keyed by the hash's first 60 bits
        db.execute("SELECT pg_advisory_xact_lock(?)", (int(sha256[:15], 16),))

    def lock_schema(self, db: Db) -> None:
        # waiting for another daemon's migration, and migrating, may take longer
        # than a statement may: no timeout for this transaction
        db.execute("SET LOCAL statement_timeout = 0")
        db.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
