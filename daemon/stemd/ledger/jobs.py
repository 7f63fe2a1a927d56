"""The ledger's jobs: one per (content sha256, output profile), the unit of
separation; claims under leases, fenced writes, retries and recovery."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from stemd.errors import StateError
from stemd.ledger.backends import Db
from stemd.ledger.core import (
    CURRENT_FAILED_JOB,
    LedgerCore,
    like_prefix,
    patient,
    prefix_pattern,
)
from stemd.ledger.records import (
    ALLOWED_TRANSITIONS,
    ORIGIN_HTTP,
    Fault,
    InputRecord,
    InputState,
    InputTaken,
    JobRecord,
    JobState,
    LeaseLost,
    TransitionError,
    input_of,
    job_of,
)

if TYPE_CHECKING:  # a dataclass of the profile's; the ledger computes none
    from stemd.profile import Profile

log = logging.getLogger("stemd")

# an input (of the UPDATE's table) whose path no later input published stems for:
# dismissed by hand, not replaced by good audio (ledger.core's _supersede)
NOT_REPLACED = (
    "NOT EXISTS (SELECT 1 FROM inputs AS later WHERE later.relative = inputs.relative "
    "AND later.id > inputs.id AND later.state IN "
    f"('{InputState.PUBLISHED.value}', '{InputState.DUPLICATE.value}', "
    f"'{InputState.SKIPPED.value}'))"
)


def params_text(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


class JobLedger(LedgerCore):
    @patient
    def attach(self, input_id: int, sha256: str, profile: Profile, source: str) -> JobRecord:
        """Record the input's hash and attach it to the job for (sha256, profile
        key); a new job keeps the profile's parameters and separation.

        Creates the job (queued, this input its owner) when the key is new. A
        job made for an upload is pinned to this node: only it can read the file.
        Raises InputTaken if the input is no longer this node's to attach (an
        idle host took it over to hash; its row is locked here until commit, so
        it cannot be taken while this runs).
        """
        with self._write() as db:
            now = self.backend.now(db)
            held = db.execute(
                "SELECT origin FROM inputs WHERE id = ? AND state = ? "
                f"AND (node IS NULL OR node = ?){self.backend.lock_rows}",
                (input_id, InputState.PENDING.value, self.node),
            ).fetchone()
            if held is None:
                raise InputTaken(input_id)
            # (a ledger no other daemon shares runs every job here anyway)
            upload = held["origin"] == ORIGIN_HTTP
            pinned = self.node if upload and self.backend.shared else None
            # this content's jobs are not re-keyed (`rekey_queued`) while it attaches
            self.backend.lock_content(db, sha256)
            db.execute(
                "INSERT INTO jobs (sha256, profile, state, source, owner_input, created_at, "
                "pinned, params, separation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (
                    sha256,
                    profile.key,
                    JobState.QUEUED.value,
                    source,
                    input_id,
                    now,
                    pinned,
                    params_text(profile.params),
                    profile.separation,
                ),
            )
            # the job's row is locked until this commits: a completion (or failure)
            # committing meanwhile is waited for and seen, else it sees this input
            # among the ones waiting for copies (`complete`); either way it is served
            job = db.execute(
                f"SELECT * FROM jobs WHERE sha256 = ? AND profile = ?{self.backend.lock_rows}",
                (sha256, profile.key),
            ).fetchone()
            if job is None:  # the content lock keeps every other writer of the key out
                raise StateError(
                    f"the job for {sha256[:12]} vanished while input {input_id} attached"
                )
            db.execute(
                "UPDATE inputs SET sha256 = ?, job_id = ?, state = ?, updated_at = ? WHERE id = ?",
                (sha256, job["id"], InputState.ATTACHED.value, now, input_id),
            )
        return job_of(job)

    @patient
    def rerender(self, job: JobRecord, record: InputRecord) -> bool:
        """done -> queued: `record` asked for a copy of the job's stems and they are
        gone, or their manifest cannot be trusted. The job is separated again for
        that input (its owner now; pinned here if it is an upload), attempts anew.
        False, and nothing changed, when the job is no longer the done one `job`
        describes (another input or host had it rendered again first)."""
        with self._write() as db:
            row = db.execute(
                f"SELECT state, output_dir FROM jobs WHERE id = ?{self.backend.lock_rows}",
                (job.id,),
            ).fetchone()
            if row["state"] != JobState.DONE.value or row["output_dir"] != job.output_dir:
                return False
            upload = record.origin == ORIGIN_HTTP
            self._transition(
                db,
                job.id,
                JobState.QUEUED,
                attempts=0,
                lost=0,
                not_before=0.0,
                progress=0.0,
                error=None,
                output_dir=None,
                started_at=None,
                finished_at=None,
                owner_input=record.id,
                source=record.relative,
                pinned=self.node if upload and self.backend.shared else None,
            )
        return True

    @patient
    def get_job(self, job_id: int) -> JobRecord:
        with self._read() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise StateError(f"job {job_id} is not in the ledger")
        return job_of(row)

    @patient
    def job_of_input(self, input_id: int) -> JobRecord:
        """The job an input is attached to now, in one read (new output settings can
        merge a queued job into another: the input moves, its old job goes)."""
        with self._read() as db:
            row = db.execute(
                "SELECT jobs.* FROM jobs JOIN inputs ON inputs.job_id = jobs.id "
                "WHERE inputs.id = ?",
                (input_id,),
            ).fetchone()
        if row is None:
            raise StateError(f"input {input_id} is attached to no job in the ledger")
        return job_of(row)

    def _claimable(self) -> str:
        """Jobs a worker of this node may take: queued and due, or running on a
        lease that ran out; of the separation the worker's model makes (it renders
        the job with the job's own parameters), or, for a job made before jobs
        kept them, keyed by the profile the worker renders; pinned elsewhere
        excluded; and not of content another worker is separating under the same
        model right now (that worker renders the content's other jobs from its
        separation next: claimed here, the content would be separated twice)."""
        return (
            f"((state = '{JobState.QUEUED.value}' AND not_before <= ?) OR "
            f"(state = '{JobState.RUNNING.value}' AND lease_until < ?)) "
            "AND (separation = ? OR (separation IS NULL AND profile = ?)) "
            "AND (pinned IS NULL OR pinned = ?) "
            "AND NOT EXISTS (SELECT 1 FROM jobs AS twin WHERE twin.sha256 = jobs.sha256 "
            "AND twin.separation = jobs.separation AND twin.id != jobs.id "
            f"AND twin.state = '{JobState.RUNNING.value}' AND twin.lease_until >= ? "
            "AND twin.lease_owner != ?)"
        )

    def _claim_params(self, now: float, profile: Profile, worker: str) -> tuple[object, ...]:
        owner = f"{self.node}/{worker}"
        return (now, now, profile.separation, profile.key, self.node, now, owner)

    @patient
    def next_queued(
        self, profile: Profile, other_than: str | None = None, worker: str = "worker"
    ) -> JobRecord | None:
        """The job `claim_next(worker, profile=...)` would take now, left
        unclaimed, of content other than `other_than` (what to decode ahead: the
        same content's other jobs are rendered from the separation in hand)."""
        with self._read() as db:
            now = self.backend.now(db)
            row = db.execute(
                f"SELECT * FROM jobs WHERE {self._claimable()} AND sha256 != ? ORDER BY id LIMIT 1",
                (*self._claim_params(now, profile, worker), other_than or ""),
            ).fetchone()
        return job_of(row) if row else None

    @patient
    def claim_next(
        self,
        worker: str = "worker",
        lease: float = 30.0,
        *,
        profile: Profile,
        prefer: str | None = None,
    ) -> JobRecord | None:
        """Take the oldest claimable job (`_claimable`: of the separation of
        `profile`, the one the worker's model makes; a host of another model, or
        a worker still on the model before a reload, leaves the job to one that
        makes it); first of all one of content `prefer` (whose separation the
        worker holds: rendered without the model): -> running under a lease of
        `lease` seconds held by "node/worker". A queued job's attempt is
        counted; a job taken over from a lost worker keeps its attempts and
        counts a loss."""
        owner = f"{self.node}/{worker}"
        with self._write() as db:
            now = self.backend.now(db)
            row = db.execute(
                f"SELECT * FROM jobs WHERE {self._claimable()} "
                "ORDER BY CASE WHEN sha256 = ? THEN 0 ELSE 1 END, id LIMIT 1"
                f"{self.backend.skip_locked}",
                (*self._claim_params(now, profile, worker), prefer or ""),
            ).fetchone()
            if row is None:
                return None
            taken_over = row["state"] == JobState.RUNNING.value
            claimed = db.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + ?, lost = lost + ?, "
                "claim = claim + 1, lease_owner = ?, lease_until = ?, progress = 0, "
                "started_at = ? WHERE id = ? RETURNING *",
                (
                    JobState.RUNNING.value,
                    0 if taken_over else 1,
                    1 if taken_over else 0,
                    owner,
                    now + lease,
                    now,
                    row["id"],
                ),
            ).fetchone()
        if taken_over:
            log.warning(
                "%s: taken over from %s, whose lease ran out %.0fs ago (lost %d time(s))",
                row["source"],
                row["lease_owner"],
                now - (row["lease_until"] or now),
                claimed["lost"],
            )
        return job_of(claimed)

    @patient
    def renew(self, held: dict[int, int], lease: float) -> set[int]:
        """Extend the leases of the jobs held ({job id: claim}) to `lease`
        seconds from now. Returns the ids whose claim is no longer theirs."""
        lost: set[int] = set()
        if not held:
            return lost
        with self._write() as db:
            until = self.backend.now(db) + lease
            for job_id, claim in sorted(held.items()):  # one order for every writer
                updated = db.execute(
                    "UPDATE jobs SET lease_until = ? WHERE id = ? AND claim = ? AND state = ?",
                    (until, job_id, claim, JobState.RUNNING.value),
                ).rowcount
                if updated != 1:
                    lost.add(job_id)
        return lost

    def holds(self, job: JobRecord, lease: float) -> bool:
        """Whether this claim still holds the job, its lease renewed if so: asked
        just before publishing, so a late worker never writes stems."""
        return job.id not in self.renew({job.id: job.claim}, lease)

    def _transition(
        self,
        db: Db,
        job_id: int,
        wanted: JobState,
        claim: int | None = None,
        **fields: object,
    ) -> None:
        """Move a job, checking the move is allowed and, for a worker's write
        (`claim` given), that the claim still holds the job (fencing)."""
        row = db.execute(
            f"SELECT state, claim FROM jobs WHERE id = ?{self.backend.lock_rows}", (job_id,)
        ).fetchone()
        if row is None:
            if claim is not None:  # merged into another job (`rekey_queued`) after its
                raise LeaseLost(job_id, claim)  # lease ran out: this holder lost it
            raise StateError(f"job {job_id} is not in the ledger")
        current = JobState(row["state"])
        if claim is not None and (current is not JobState.RUNNING or row["claim"] != claim):
            raise LeaseLost(job_id, claim)
        if wanted not in ALLOWED_TRANSITIONS[current]:
            raise TransitionError(job_id, current, wanted)
        if wanted is not JobState.RUNNING:  # no one holds a job that is not running
            fields.update(lease_owner=None, lease_until=None)
        if wanted is JobState.FAILED:
            fields.setdefault("fault", Fault.STEMD.value)
        else:
            fields["fault"] = None
        assignments = ", ".join(f"{name} = ?" for name in ("state", *fields))
        db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ?",
            (wanted.value, *fields.values(), job_id),
        )

    @patient
    def set_progress(self, job: JobRecord, fraction: float) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET progress = ? WHERE id = ? AND claim = ?",
                (fraction, job.id, job.claim),
            )

    @patient
    def complete(
        self, job: JobRecord, owner_input: int, output_dir: str
    ) -> tuple[JobRecord, list[InputRecord]]:
        """running -> done, and the owner input published, in one transaction.
        Returns the job as it is now and the inputs waiting for copies of its
        stems, read under the job's row lock (an attach of the same content waits
        for it, and then sees the job done). LeaseLost if the job was taken over
        meanwhile."""
        with self._write() as db:
            now = self.backend.now(db)
            self._transition(
                db,
                job.id,
                JobState.DONE,
                claim=job.claim,
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
            published = db.execute("SELECT * FROM jobs WHERE id = ?", (job.id,)).fetchone()
            waiting = db.execute(
                "SELECT * FROM inputs WHERE job_id = ? AND state = ? ORDER BY id",
                (job.id, InputState.ATTACHED.value),
            ).fetchall()
        return job_of(published), [input_of(row) for row in waiting]

    @patient
    def requeue(self, job: JobRecord, error: str | None, delay: float, count_attempt: bool) -> None:
        """running -> queued: interrupted, or failed with attempts left (after `delay`)."""
        with self._write() as db:
            self._transition(
                db,
                job.id,
                JobState.QUEUED,
                claim=job.claim,
                error=error,
                not_before=self.backend.now(db) + delay,
                progress=0.0,
            )
            if not count_attempt:
                db.execute("UPDATE jobs SET attempts = attempts - 1 WHERE id = ?", (job.id,))

    @patient
    def fail(self, job: JobRecord, error: str, fault: Fault = Fault.STEMD) -> list[InputRecord]:
        """-> failed, with the reason and whose fault it is; every waiting input
        fails with it. Returns them. A running job must still be held by this claim."""
        with self._write() as db:
            now = self.backend.now(db)
            claim = job.claim if job.state is JobState.RUNNING else None
            self._transition(
                db,
                job.id,
                JobState.FAILED,
                claim=claim,
                error=error,
                finished_at=now,
                fault=fault.value,
            )
            return self._fail_waiting_inputs(db, job.id, error, now)

    def _fail_waiting_inputs(
        self, db: Db, job_id: int, error: str, now: float
    ) -> list[InputRecord]:
        db.execute(
            "UPDATE inputs SET state = ?, error = ?, updated_at = ? WHERE job_id = ? AND state = ?",
            (InputState.FAILED.value, error, now, job_id, InputState.ATTACHED.value),
        )
        rows = db.execute(
            "SELECT * FROM inputs WHERE job_id = ? AND state = ? AND disposed = 0",
            (job_id, InputState.FAILED.value),
        ).fetchall()
        return [input_of(r) for r in rows]

    def retry(self, sha256: str | None = None) -> int:
        """failed -> queued for one content hash (any prefix of 6+ digits) or all,
        among the current failures (not dismissed ones).

        Attempts start over. Returns how many jobs were requeued.
        """
        return len(self.retry_failed(sha256))

    def retry_failed(self, sha256: str | None = None) -> list[JobRecord]:
        """`retry`, returning the jobs queued again (for their `retried` events)."""
        return self._retry_where(
            f"{CURRENT_FAILED_JOB} AND sha256 LIKE ?", (prefix_pattern(sha256),)
        )

    @patient
    def _retry_where(self, condition: str, params: tuple[object, ...]) -> list[JobRecord]:
        """Queue these failed jobs again; their failed inputs, and those dismissed by
        hand, wait for them again, so a new failure is current (counted, listed)
        again. An input dismissed because good audio replaced it at its path (a
        later input there has stems) stays dismissed."""
        with self._write() as db:
            now = self.backend.now(db)
            rows = db.execute(f"SELECT id FROM jobs WHERE {condition}", params).fetchall()
            for row in rows:
                self._transition(
                    db, row["id"], JobState.QUEUED, attempts=0, lost=0, not_before=0.0, error=None
                )
                db.execute(
                    "UPDATE inputs SET state = ?, error = NULL, disposed = 0, updated_at = ? "
                    f"WHERE job_id = ? AND (state = ? OR (state = ? AND {NOT_REPLACED}))",
                    (
                        InputState.ATTACHED.value,
                        now,
                        row["id"],
                        InputState.FAILED.value,
                        InputState.DISMISSED.value,
                    ),
                )
            return [
                job_of(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())
                for row in rows
            ]

    @patient
    def dismiss(self, sha256: str | None = None) -> int:
        """Take current failures off the list: those of one content hash (any
        prefix of 6+ digits), or all with None. Files and stems are untouched; the
        same bytes dropped again fail again at once (`retry` tries them again).
        Returns how many failures (as `failed_report` lists them) were dismissed."""
        pattern = prefix_pattern(sha256)
        with self._write() as db:
            now = self.backend.now(db)
            current = f"SELECT id FROM jobs WHERE {CURRENT_FAILED_JOB} AND sha256 LIKE ?"
            jobs = db.execute(f"SELECT count(*) AS n FROM ({current}) AS c", (pattern,)).fetchone()
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
        return int(jobs["n"]) + int(refused)

    @patient
    def recover(self, max_attempts: int) -> tuple[int, int]:
        """At startup: jobs this node's workers held when it stopped (a crash)
        go back to queued (the attempt counts), or to failed when that was their
        last. On a shared ledger, other nodes' jobs are theirs until their
        leases run out; a ledger no one shares has only this node's.
        Returns (requeued, failed)."""
        requeued = failed = 0
        mine, params = "", [JobState.RUNNING.value]
        if self.backend.shared:
            mine = " AND (lease_owner IS NULL OR lease_owner LIKE ?)"
            params.append(like_prefix(self.node) + "/%")
        with self._write() as db:
            now = self.backend.now(db)
            rows = db.execute(
                f"SELECT id, attempts FROM jobs WHERE state = ?{mine}{self.backend.lock_rows}",
                params,
            ).fetchall()
            for row in rows:
                if row["attempts"] >= max_attempts:
                    reason = f"interrupted {row['attempts']} times (a crash while separating?)"
                    self._transition(db, row["id"], JobState.FAILED, error=reason, finished_at=now)
                    self._fail_waiting_inputs(db, row["id"], reason, now)
                    failed += 1
                else:
                    self._transition(db, row["id"], JobState.QUEUED, progress=0.0)
                    requeued += 1
        return requeued, failed

    @patient
    def find_job(self, sha256: str, profile: str) -> JobRecord | None:
        """The job for this content under this output profile, if there is one."""
        with self._read() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE sha256 = ? AND profile = ?", (sha256, profile)
            ).fetchone()
        return job_of(row) if row else None

    def retry_job(self, job_id: int) -> bool:
        """One failed job back to the queue, attempts from zero, a dismissed one
        too (it is current again). False if it is not failed (done, queued or
        running already)."""
        job = self.get_job(job_id)
        if job.state is not JobState.FAILED:
            return False
        return bool(self._retry_where("jobs.id = ? AND jobs.state = ?", (job_id, job.state.value)))

    @patient
    def dismiss_job(self, job_id: int) -> bool:
        """One failure off the list (`dismiss` for one job): its failed inputs are
        dismissed. True for a failed job (dismissed already, or now); False if it
        is not failed."""
        with self._write() as db:
            row = db.execute(
                f"SELECT state FROM jobs WHERE id = ?{self.backend.lock_rows}", (job_id,)
            ).fetchone()
            if row is None or row["state"] != JobState.FAILED.value:
                return False
            db.execute(
                "UPDATE inputs SET state = ?, updated_at = ? WHERE job_id = ? AND state = ?",
                (
                    InputState.DISMISSED.value,
                    self.backend.now(db),
                    job_id,
                    InputState.FAILED.value,
                ),
            )
        return True
