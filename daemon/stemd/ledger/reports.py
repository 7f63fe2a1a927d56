"""What the ledger tells about itself: the daemons (nodes) sharing it, counts,
queue positions, recent jobs and failures, for `stemd status`, the API and
metrics."""

from __future__ import annotations

import json
from typing import Any

from stemd.ledger.core import (
    CURRENT_FAILED_JOB,
    LedgerCore,
    patient,
)
from stemd.ledger.records import (
    Drained,
    InputState,
    JobRecord,
    JobState,
    NodeRecord,
    job_of,
    node_of,
)

# the meta key holding when the queue last ran empty (the database's clock)
DRAINED_MARK = "drained_at"


class ReportLedger(LedgerCore):
    @patient
    def report_node(
        self, host: str, pid: int, started_at: float, settling: int, workers: list[dict[str, Any]]
    ) -> None:
        """This daemon is alive: its host, files settling and workers, for
        `stemd status` and for other nodes deciding whether it is gone."""
        with self._write() as db:
            now = self.backend.now(db)
            db.execute(
                "INSERT INTO nodes (node, host, pid, started_at, seen_at, settling, workers) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node) DO UPDATE SET "
                "host = excluded.host, pid = excluded.pid, started_at = excluded.started_at, "
                "seen_at = excluded.seen_at, settling = excluded.settling, "
                "workers = excluded.workers",
                (self.node, host, pid, started_at, now, settling, json.dumps(workers)),
            )

    @patient
    def leave(self) -> None:
        """This daemon stops: it is no node that runs (`nodes`, status). Its row
        stays, marked (pid -1), with the time it was last heard from: others take
        its unhashed files over as from a node gone silent (10 s), and its queue,
        keyed by its settings, only once it has been away for long (a restart is
        not a host that left)."""
        with self._write() as db:
            db.execute(
                "UPDATE nodes SET pid = -1, settling = 0, workers = '[]' WHERE node = ?",
                (self.node,),
            )

    @patient
    def nodes(self) -> list[NodeRecord]:
        with self._read() as db:
            now = self.backend.now(db)
            rows = db.execute("SELECT * FROM nodes WHERE pid >= 0 ORDER BY host, node").fetchall()
        return [node_of(row, now) for row in rows]

    # -- the queue running empty ----------------------------------------------

    @patient
    def claim_drained(self) -> Drained:
        """Whether the queue is empty, and if so what ended since the last time it
        was: claimed once across every daemon sharing the ledger (a compare-and-set
        on the mark in `meta`), so a batch gets one summary however many hosts ran
        it. A first call only sets the mark (history is no batch)."""
        with self._write() as db:
            now = self.backend.now(db)
            busy = db.execute(
                "SELECT (SELECT count(*) FROM jobs WHERE state IN (?, ?)) + "
                "(SELECT count(*) FROM inputs WHERE state = ?) AS n",
                (JobState.QUEUED.value, JobState.RUNNING.value, InputState.PENDING.value),
            ).fetchone()["n"]
            mark_row = db.execute(
                "SELECT value FROM meta WHERE key = ?", (DRAINED_MARK,)
            ).fetchone()
            if mark_row is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                    (DRAINED_MARK, repr(now)),
                )
                return Drained(busy=bool(busy))
            if busy:
                return Drained(busy=True)
            mark = float(mark_row["value"])
            ended = db.execute(
                "SELECT state, count(*) AS n, min(created_at) AS began, max(finished_at) AS ended "
                "FROM jobs WHERE state IN (?, ?) AND finished_at > ? GROUP BY state",
                (JobState.DONE.value, JobState.FAILED.value, mark),
            ).fetchall()
            refused = db.execute(  # inputs refused before they had a job
                "SELECT count(*) AS n, min(detected_at) AS began, max(updated_at) AS ended "
                "FROM inputs WHERE state = ? AND job_id IS NULL AND updated_at > ?",
                (InputState.FAILED.value, mark),
            ).fetchone()
            counts = {row["state"]: int(row["n"]) for row in ended}
            done = counts.get(JobState.DONE.value, 0)
            failed = counts.get(JobState.FAILED.value, 0) + int(refused["n"])
            if done + failed == 0:
                return Drained(busy=False)
            claimed = db.execute(
                "UPDATE meta SET value = ? WHERE key = ? AND value = ? RETURNING key",
                (repr(now), DRAINED_MARK, mark_row["value"]),
            ).fetchone()
            if claimed is None:  # another daemon summed this batch up first
                return Drained(busy=False)
            began = [r["began"] for r in [*ended, refused] if r["began"] is not None]
            last = [r["ended"] for r in [*ended, refused] if r["ended"] is not None]
            start = max(mark, min(began)) if began else mark
            return Drained(False, done, failed, max(0.0, max(last, default=now) - start))

    # -- reporting ----------------------------------------------------------

    @patient
    def counts(self) -> dict[str, int]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT state, count(*) AS n FROM jobs WHERE state != '{JobState.FAILED.value}' "
                f"OR {CURRENT_FAILED_JOB} GROUP BY state"
            ).fetchall()
            counts = {state.value: 0 for state in JobState}
            for row in rows:
                counts[row["state"]] = int(row["n"])
            # inputs refused before they had a job (too big, unreadable) count as failed
            orphan = db.execute(
                "SELECT count(*) AS n FROM inputs WHERE state = ? AND job_id IS NULL",
                (InputState.FAILED.value,),
            ).fetchone()["n"]
        # settled files not hashed yet (workers hash between jobs) are waiting
        # too: a user counts them as queued
        counts[JobState.FAILED.value] += int(orphan)
        counts[JobState.QUEUED.value] += self.count_inputs(InputState.PENDING)
        return counts

    @patient
    def count_inputs(self, state: InputState) -> int:
        """How many inputs are in `state`: DUPLICATE are the copies served from
        stems that existed, PENDING those settled but not hashed yet."""
        with self._read() as db:
            row = db.execute(
                "SELECT count(*) AS n FROM inputs WHERE state = ?", (state.value,)
            ).fetchone()
        return int(row["n"])

    @patient
    def queue_position(self, job: JobRecord) -> int | None:
        """1 for the job taken next (among those due), None unless queued."""
        if job.state is not JobState.QUEUED:
            return None
        with self._read() as db:
            row = db.execute(
                "SELECT count(*) AS n FROM jobs WHERE state = ? AND (not_before < ? "
                "OR (not_before = ? AND id < ?))",
                (JobState.QUEUED.value, job.not_before, job.not_before, job.id),
            ).fetchone()
        return int(row["n"]) + 1

    def recent_jobs(
        self,
        state: JobState | None = None,
        limit: int = 50,
        query: str | None = None,
        before: int | None = None,
        dismissed: bool = False,
    ) -> list[JobRecord]:
        """The newest jobs first, all or in one state; with `query`, those whose
        source name holds it (any case: ASCII letters on SQLite, whose lower()
        folds no others); with `before`, only jobs older than that id (the next
        page: pass the last id of the page before); failures no longer current
        (dismissed, or their file replaced by good audio) only with `dismissed`."""
        where: list[str] = []
        params: list[object] = []
        if state is not None:
            where.append("state = ?")
            params.append(state.value)
        if not dismissed:
            where.append(f"(state != '{JobState.FAILED.value}' OR {CURRENT_FAILED_JOB})")
        if query:
            escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("lower(source) LIKE ? ESCAPE '\\'")
            params.append(f"%{escaped}%")
        if before is not None:
            where.append("id < ?")
            params.append(before)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        return self._jobs(f"SELECT * FROM jobs {clause}ORDER BY id DESC LIMIT ?", (*params, limit))

    @patient
    def failure_is_current(self, job_id: int) -> bool:
        """Whether this job is a failure `status` counts and lists: failed, with an
        input still failed (not dismissed, not replaced by good audio)."""
        with self._read() as db:
            row = db.execute(
                f"SELECT 1 FROM jobs WHERE id = ? AND {CURRENT_FAILED_JOB}", (job_id,)
            ).fetchone()
        return row is not None

    def jobs_in(self, state: JobState, limit: int = 50) -> list[JobRecord]:
        return self._jobs(
            "SELECT * FROM jobs WHERE state = ? ORDER BY id DESC LIMIT ?", (state.value, limit)
        )

    @patient
    def _jobs(self, sql: str, params: tuple[object, ...]) -> list[JobRecord]:
        with self._read() as db:
            return [job_of(r) for r in db.execute(sql, params).fetchall()]

    @patient
    def failed_report(self, limit: int = 50) -> list[dict[str, object]]:
        """Recent current failures: failed jobs, and inputs refused before hashing."""
        with self._read() as db:
            rows = db.execute(
                # a job under the name of its first input while that one is still
                # failed, else of its latest failed one (the first may have been
                # replaced by good audio since)
                "SELECT coalesce("
                "(SELECT relative FROM inputs AS i WHERE i.id = jobs.owner_input "
                f"AND i.state = '{InputState.FAILED.value}'), "
                "(SELECT relative FROM inputs AS i WHERE i.job_id = jobs.id "
                f"AND i.state = '{InputState.FAILED.value}' ORDER BY i.id DESC LIMIT 1)) "
                "AS source, sha256, error, attempts, finished_at AS t FROM jobs "
                f"WHERE {CURRENT_FAILED_JOB} "
                "UNION ALL SELECT relative, sha256, error, 0, updated_at FROM inputs "
                "WHERE state = ? AND job_id IS NULL ORDER BY t DESC LIMIT ?",
                (InputState.FAILED.value, limit),
            ).fetchall()
        return [
            {
                "source": r["source"],
                "sha256": r["sha256"],
                "error": r["error"],
                "attempts": r["attempts"],
            }
            for r in rows
        ]
