"""The ledger's operations: seen files, jobs and their states, the dedup index,
leases. One set of SQL for both backends (stemd.ledger.backends).

`inputs` holds one row per file occurrence seen, keyed by (path, device,
inode, size, mtime): the stat cache that lets rescans skip unchanged files
without rehashing. `jobs` holds one row per (content sha256, output profile):
the unit of separation. Several inputs can point at one job (copies of the same
track); the first is the job's owner, whose name the stems are published under;
the others get the stems reused. `nodes` has a row per running daemon.

Several workers, in one process or on several hosts, share a ledger through
leases: a worker claims a job for `lease` seconds of the database's clock and
its daemon renews that while the worker shows signs of life. A job whose lease
ran out is taken by the next worker that asks. Each claim bumps the job's
`claim` number; every write a worker makes for a job names the claim it holds,
and is refused (LeaseLost) once the job was claimed again: a host that wakes
up late cannot commit over the one that took its job over.

Each public operation is one or a few transactions that may simply run again.
A thread that called `wait_here` waits out an unreachable database (with
backoff) instead of failing; other threads get LedgerUnavailable at once.
"""

from __future__ import annotations

from stemd.ledger.callbacks import CallbackLedger
from stemd.ledger.inputs import InputLedger
from stemd.ledger.rekey import KeyLedger
from stemd.ledger.reports import ReportLedger


class Ledger(InputLedger, KeyLedger, ReportLedger, CallbackLedger):
    """The ledger's operations, grouped by what they are about (inputs, jobs and
    their keys, reports, callbacks) over one core (stemd.ledger.core)."""
