"""The ledger when settings or hosts change under queued work: jobs keyed by
output settings no running host renders are keyed anew (`rekey_queued`), and
inputs a crash left waiting on an ended job are found (`stranded_inputs`).

A worker claims only jobs of the separation its model makes (stemd.ledger.jobs);
without this, a new model, or a host that died, would leave jobs no one claims;
and a reload's new output settings or rules would not reach what is queued."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from stemd.ledger.core import patient
from stemd.ledger.jobs import JobLedger, params_text
from stemd.ledger.records import InputRecord, InputState, JobRecord, JobState, input_of, job_of

if TYPE_CHECKING:
    from stemd.profile import Profile

log = logging.getLogger("stemd")


class KeyLedger(JobLedger):
    def _rekeyable(self, everything: bool) -> str:
        """Jobs this node may re-key: queued, or running on a lease that ran out
        (its host died or hung); not pinned to another node (an upload only its
        node can read). With `everything` (new settings here): those whose owner
        input is this node's. Else: those this node's workers cannot claim (of
        another separation, or made before jobs kept their parameters under
        another profile) whose owner input is this node's or a node's gone for
        longer than the caller's grace (a live host of another model renders
        its own; a gone host's jobs of this model are claimed as they are)."""
        if everything:
            which = "jobs.owner_input IN (SELECT id FROM inputs WHERE node IS NULL OR node = ?)"
        else:
            which = (
                "(jobs.separation IS NULL AND jobs.profile != ? OR jobs.separation != ?) AND "
                "jobs.owner_input IN (SELECT id FROM inputs WHERE node IS NULL OR node = ? OR "
                "NOT EXISTS (SELECT 1 FROM nodes WHERE nodes.node = inputs.node "
                "AND nodes.seen_at >= ?))"
            )
        return (
            "(jobs.pinned IS NULL OR jobs.pinned = ?) AND "
            f"(jobs.state = '{JobState.QUEUED.value}' OR "
            f"(jobs.state = '{JobState.RUNNING.value}' AND jobs.lease_until < ?)) AND {which}"
        )

    def rekey_queued(
        self,
        target_of: Callable[[InputRecord], Profile | None],
        own: Profile,
        everything: bool,
        stale_after: float = 120.0,
        beat: Callable[[], None] = lambda: None,
    ) -> list[tuple[InputRecord, JobRecord]]:
        """Jobs this node may re-key (`_rekeyable`) take the profile `target_of`
        gives their owner input today (None: leave it): a reload or a restart
        with new output settings or rules applies to what is still queued
        (`everything`, after new settings), and nothing is left that no running
        host renders (a dead host's running job goes back to the queue first,
        counted as lost; `own`, the profile of this node's defaults, says which
        separation its workers make). A gone host's job becomes this node's (its
        owner input moves here), so live hosts of different settings do not
        re-key it back and forth. A job made before jobs kept their parameters
        gets them.

        Where this content already has a job under the new profile, the job is
        merged into it: its inputs move over and it is deleted. Returns the
        inputs moved onto such a job that still wait for stems, with that job,
        for intake to settle as a fresh attach would (a copy of finished stems,
        the failure repeated, or a wait).

        One job per transaction (each run again by itself after a conflict; `beat`
        called between them), under its content's lock as `attach` takes it, so
        neither finds the other's key half-changed. A renewal locking the same two
        jobs in the other order can still meet it in a cycle: the server breaks
        it, and the loser runs again (`LedgerConflict`)."""
        moved: list[tuple[InputRecord, JobRecord]] = []
        for job, owner in self._rekey_candidates(own, everything, stale_after):
            target = target_of(owner)
            if target is None or (target.key == job.profile and job.params_json is not None):
                continue
            beat()
            moved.extend(self._rekey(job.id, job.sha256, target, own, everything, stale_after))
        return moved

    @patient
    def _rekey_candidates(
        self, own: Profile, everything: bool, stale_after: float
    ) -> list[tuple[JobRecord, InputRecord]]:
        with self._read() as db:
            now = self.backend.now(db)
            where, params = (
                self._rekeyable(everything),
                self._rekey_params(own, everything, now, stale_after),
            )
            jobs = db.execute(
                f"SELECT * FROM jobs WHERE {where} ORDER BY jobs.sha256, jobs.id", params
            ).fetchall()
            # their owner inputs in one read, not one a job
            owners = {
                row["id"]: input_of(row)
                for row in db.execute(
                    "SELECT * FROM inputs WHERE id IN "
                    f"(SELECT jobs.owner_input FROM jobs WHERE {where})",
                    params,
                ).fetchall()
            }
        found = [
            (job_of(job), owners[job["owner_input"]])
            for job in jobs
            if job["owner_input"] in owners
        ]
        return found

    def _rekey_params(
        self, own: Profile, everything: bool, now: float, stale_after: float
    ) -> tuple[object, ...]:
        if everything:
            return (self.node, now, self.node)
        gone = self._gone_before(now, stale_after)
        return (self.node, now, own.key, own.separation, self.node, gone)

    @patient
    def _rekey(
        self,
        job_id: int,
        sha256: str,
        target: Profile,
        own: Profile,
        everything: bool,
        stale_after: float,
    ) -> list[tuple[InputRecord, JobRecord]]:
        with self._write() as db:
            now = self.backend.now(db)
            self.backend.lock_content(db, sha256)
            row = db.execute(
                f"SELECT * FROM jobs WHERE jobs.id = ? AND {self._rekeyable(everything)}"
                f"{self.backend.lock_rows}",
                (job_id, *self._rekey_params(own, everything, now, stale_after)),
            ).fetchone()
            if row is None or (row["profile"] == target.key and row["params"] is not None):
                return []  # claimed, re-keyed or merged meanwhile
            if row["profile"] == target.key:  # made before jobs kept their parameters
                db.execute(
                    "UPDATE jobs SET params = ?, separation = ? WHERE id = ?",
                    (params_text(target.params), target.separation, job_id),
                )
                return []
            if row["state"] == JobState.RUNNING.value:
                self._transition(db, job_id, JobState.QUEUED, lost=row["lost"] + 1, progress=0.0)
                log.warning(
                    "%s: its worker %s is gone (its lease ran out); queued again here",
                    row["source"],
                    row["lease_owner"],
                )
            db.execute(
                "UPDATE inputs SET node = ? WHERE id = ? AND (node IS NULL OR node != ?)",
                (self.node, row["owner_input"], self.node),
            )
            other = db.execute(
                f"SELECT * FROM jobs WHERE sha256 = ? AND profile = ?{self.backend.lock_rows}",
                (sha256, target.key),
            ).fetchone()
            if other is None:
                db.execute(
                    "UPDATE jobs SET profile = ?, params = ?, separation = ? WHERE id = ?",
                    (target.key, params_text(target.params), target.separation, job_id),
                )
                log.info("%s: queued under the new output settings", row["source"])
                return []
            waiting = db.execute(
                "SELECT * FROM inputs WHERE job_id = ? AND state = ? ORDER BY id",
                (job_id, InputState.ATTACHED.value),
            ).fetchall()
            db.execute(
                "UPDATE inputs SET job_id = ?, updated_at = ? WHERE job_id = ?",
                (other["id"], now, job_id),
            )
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            log.info(
                "%s: the same content has a job under the new output settings "
                "(job %d); waiting for it instead",
                row["source"],
                other["id"],
            )
        return [(input_of(r), job_of(other)) for r in waiting]

    @patient
    def stranded_inputs(
        self, ended_before: float, stale_after: float = 60.0
    ) -> list[tuple[InputRecord, JobRecord]]:
        """Inputs still waiting on a job that ended `ended_before` seconds ago or
        longer, untouched as long: the host that ends a job serves its copies
        right after the commit, so these are copies a crash (or an outbox error)
        left unserved. This node's inputs, and those of nodes gone for
        `stale_after`. Each is taken for this node (a compare-and-set on its
        `updated_at`) before it is returned: hosts sweeping at once serve each
        once."""
        taken: list[tuple[InputRecord, JobRecord]] = []
        with self._write() as db:
            now = self.backend.now(db)
            rows = db.execute(
                "SELECT inputs.*, jobs.id AS stranded_on FROM inputs JOIN jobs "
                "ON jobs.id = inputs.job_id WHERE inputs.state = ? AND jobs.state IN (?, ?) "
                "AND jobs.finished_at < ? AND inputs.updated_at < ? AND (inputs.node IS NULL "
                "OR inputs.node = ? OR NOT EXISTS (SELECT 1 FROM nodes WHERE nodes.node = "
                "inputs.node AND nodes.seen_at >= ?)) ORDER BY inputs.id",
                (
                    InputState.ATTACHED.value,
                    JobState.DONE.value,
                    JobState.FAILED.value,
                    now - ended_before,
                    now - ended_before,
                    self.node,
                    self._gone_before(now, stale_after),
                ),
            ).fetchall()
            for row in rows:
                claimed = db.execute(
                    "UPDATE inputs SET node = ?, updated_at = ? WHERE id = ? AND state = ? "
                    "AND updated_at = ?",
                    (self.node, now, row["id"], InputState.ATTACHED.value, row["updated_at"]),
                ).rowcount
                if claimed != 1:
                    continue  # another host took it
                job = db.execute(
                    "SELECT * FROM jobs WHERE id = ?", (row["stranded_on"],)
                ).fetchone()
                taken.append((input_of(row), job_of(job)))
        return taken
