"""What the ledger holds: job and input states, their rows, the allowed moves.

Shared by both backends and by everything that reads the ledger; no SQL here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from stemd.errors import StateError

ORIGIN_INBOX = "inbox"
ORIGIN_HTTP = "http"  # uploaded to the HTTP API, spooled under state_dir/uploads


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


# running -> queued is an interruption (shutdown, crash recovery, a lease that
# ran out); failed -> queued is `stemd retry`; done -> queued is a re-render: a copy
# of the stems was asked for and they are gone, or their manifest is not stemd's.
ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.DONE, JobState.FAILED, JobState.QUEUED}),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.DONE: frozenset({JobState.QUEUED}),
}


class Fault(StrEnum):
    """Why a failed job failed: the file itself (the same bytes fail again), or
    stemd, which gave up on it (attempts used up, interrupted too often)."""

    INPUT = "input"
    STEMD = "stemd"


class InputState(StrEnum):
    PENDING = "pending"  # seen and settled, not yet hashed
    ATTACHED = "attached"  # hashed; waits for its job
    PUBLISHED = "published"  # the job's stems were published under this name
    DUPLICATE = "duplicate"  # stems reused from an identical earlier track
    SKIPPED = "skipped"  # nothing written, by configuration (on_conflict/duplicates: skip)
    FAILED = "failed"
    # a failure off the list: `stemd dismiss`, or a later file at its path published
    DISMISSED = "dismissed"


class TransitionError(StateError):
    def __init__(self, job_id: int, current: JobState, wanted: JobState) -> None:
        super().__init__(f"job {job_id}: cannot go from {current.value} to {wanted.value}")
        self.current = current
        self.wanted = wanted


class LeaseLost(StateError):
    """The job's lease ran out and it was taken over (or requeued): the worker
    that held it must not write anything for it any more (fencing)."""

    def __init__(self, job_id: int, claim: int) -> None:
        super().__init__(f"job {job_id}: claim {claim} no longer holds its lease")
        self.job_id = job_id


class InputTaken(StateError):
    """Another host took this pending input to hash while this one was busy:
    it is theirs to attach now, not ours."""

    def __init__(self, input_id: int) -> None:
        super().__init__(f"input {input_id} was taken by another host to hash")
        self.input_id = input_id


class LedgerUnavailable(StateError):
    """The ledger's database cannot be reached (PostgreSQL restarting, the
    network down) and the caller stopped waiting for it."""


class LedgerConflict(LedgerUnavailable):
    """The database rolled a transaction back to break a deadlock (or a
    serialization failure): it is reachable, and the transaction may run again."""


@dataclass(frozen=True)
class FileStat:
    """A file version's identity: same path and FileStat means unchanged bytes.

    The device number is recorded but not compared: it differs between hosts
    mounting one share, and between mounts of it on one host.
    """

    dev: int = field(compare=False)
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
    node: str | None = None  # the daemon that registered it (and hashes it)
    choices_json: str | None = None  # an upload's own choices (stemd.choices), as JSON

    @property
    def choices(self) -> dict[str, Any]:
        return dict(json.loads(self.choices_json)) if self.choices_json else {}


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
    # the fencing token: 1 + the number of times the job was claimed; a worker
    # writes for the job only while the ledger still has its claim
    claim: int = 0
    lease_owner: str | None = None  # "node/worker" holding it while running
    lease_until: float | None = None  # the database's clock
    lost: int = 0  # times its worker was lost (lease ran out) while running it
    pinned: str | None = None  # only this node can read its source (an upload)
    fault: Fault | None = None  # set while failed
    # what the profile key fingerprints (stemd.profile), and its model part; None
    # for a job made before they were kept: rendered by a worker of that profile
    params_json: str | None = None
    separation: str | None = None

    @property
    def params(self) -> dict[str, Any] | None:
        return dict(json.loads(self.params_json)) if self.params_json else None


@dataclass(frozen=True)
class Drained:
    """The queue ran empty: what ended since it last did (for one summary)."""

    busy: bool  # jobs are queued or running, or files wait to be hashed: not drained
    done: int = 0
    failed: int = 0
    seconds: float = 0.0  # from the first of them queued (or the last summary) to the end


@dataclass(frozen=True)
class NodeRecord:
    """One daemon sharing the ledger, as it last reported itself."""

    node: str
    host: str
    pid: int
    started_at: float
    seen_at: float
    age: float  # seconds since seen_at, by the database's clock
    settling: int  # files it has seen still being written or settling
    workers: list[dict[str, Any]]

    @property
    def busy(self) -> bool:
        """No worker free to hash what it registered: each runs a job (or died)."""
        return bool(self.workers) and all(
            w.get("job") is not None or not w.get("alive") for w in self.workers
        )


def node_of(row: Mapping[str, Any], now: float) -> NodeRecord:
    """A `nodes` row; `now` by the database's clock, which `seen_at` is on."""
    return NodeRecord(
        node=row["node"],
        host=row["host"],
        pid=row["pid"],
        started_at=row["started_at"],
        seen_at=row["seen_at"],
        age=max(0.0, now - row["seen_at"]),
        settling=row["settling"],
        workers=json.loads(row["workers"]),
    )


def input_of(row: Mapping[str, Any]) -> InputRecord:
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
        node=row["node"],
        choices_json=row["choices"],
    )


def job_of(row: Mapping[str, Any]) -> JobRecord:
    return JobRecord(
        id=row["id"],
        sha256=row["sha256"],
        profile=row["profile"],
        state=JobState(row["state"]),
        attempts=row["attempts"],
        error=row["error"],
        fault=Fault(row["fault"]) if row["fault"] else None,
        source=row["source"],
        owner_input=row["owner_input"],
        output_dir=row["output_dir"],
        progress=row["progress"],
        not_before=row["not_before"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        claim=row["claim"],
        lease_owner=row["lease_owner"],
        lease_until=row["lease_until"],
        lost=row["lost"],
        pinned=row["pinned"],
        params_json=row["params"],
        separation=row["separation"],
    )
