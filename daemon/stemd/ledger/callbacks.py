"""The ledger's callbacks: the URL an input asked to be called at when its job
ends, and which end of the job each input was called for.

An end of a job is named by its `finished_at` (a retried job that ends again
has a new one). An input is due when it has a callback URL, its job has ended
(done or failed), the input itself is finished with (a copy still to be served
waits for it), its last posted end (`callback_end`) is not this one, and no
other live host holds a claim on this end. A host claims a due callback with a
compare-and-set (`callback_claim`, `callback_claim_end`), posts it, then marks
the end posted (`finish_callback`). A claim outlives its holder only as long as
the holder is not gone: its own restart (the node id survives it), or another
host once it was not heard from, posts it again. So a crash between the POST
and the mark can post one end twice; nothing is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from stemd.ledger.core import LedgerCore, patient
from stemd.ledger.records import InputState, JobState

# the input has what it waited for (stems, a copy, a failure)
_ENDED_INPUT = (
    InputState.PUBLISHED.value,
    InputState.DUPLICATE.value,
    InputState.SKIPPED.value,
    InputState.FAILED.value,
    InputState.DISMISSED.value,
)
_ENDED_JOB = (JobState.DONE.value, JobState.FAILED.value)


@dataclass(frozen=True)
class DueCallback:
    input_id: int
    url: str
    job_id: int
    end: float  # the job's finished_at: which end this is
    source: str  # the input's name, for log lines


class CallbackLedger(LedgerCore):
    @patient
    def set_callback_url(self, input_id: int, url: str | None) -> None:
        """The URL to POST the input's job to when it ends (None: no callback).
        Checked by the caller (stemd.callbacks.check_callback_url). An input
        whose job has already ended is called at once (the next look)."""
        with self._write() as db:
            db.execute(
                "UPDATE inputs SET callback_url = ?, callback_end = NULL, callback_claim = NULL, "
                "callback_claim_end = NULL, updated_at = ? WHERE id = ?",
                (url, self.backend.now(db), input_id),
            )

    @patient
    def callbacks_of(self, job_id: int) -> list[tuple[int, str]]:
        """(input id, callback URL) of each of the job's inputs that asked for one."""
        with self._read() as db:
            rows = db.execute(
                "SELECT id, callback_url FROM inputs WHERE job_id = ? "
                "AND callback_url IS NOT NULL ORDER BY id",
                (job_id,),
            ).fetchall()
        return [(row["id"], row["callback_url"]) for row in rows]

    def _held_elsewhere(self, end: str = "jobs.finished_at") -> str:
        """SQL: a live host other than this one holds a claim on the job's end
        (`end`: the SQL naming it; parameters: this node, [end,] gone before)."""
        return (
            "(inputs.callback_claim IS NOT NULL AND inputs.callback_claim != ? "
            f"AND inputs.callback_claim_end = {end} AND EXISTS (SELECT 1 FROM nodes "
            "WHERE nodes.node = inputs.callback_claim AND nodes.seen_at >= ?))"
        )

    @patient
    def due_callbacks(self, limit: int = 100, stale_after: float = 60.0) -> list[DueCallback]:
        """Callbacks to post now: not yet posted for their job's latest end, and
        not claimed by another host heard from within `stale_after` seconds (this
        node's own claims are due: the caller knows which it is posting)."""
        states = ", ".join("?" for _ in _ENDED_INPUT)
        with self._read() as db:
            now = self.backend.now(db)
            rows = db.execute(
                "SELECT inputs.id AS input_id, inputs.callback_url, inputs.relative, "
                "jobs.id AS job_id, jobs.finished_at FROM inputs "
                "JOIN jobs ON jobs.id = inputs.job_id "
                "WHERE inputs.callback_url IS NOT NULL "
                f"AND inputs.state IN ({states}) AND jobs.state IN (?, ?) "
                "AND jobs.finished_at IS NOT NULL "
                "AND (inputs.callback_end IS NULL OR inputs.callback_end != jobs.finished_at) "
                f"AND NOT {self._held_elsewhere()} ORDER BY inputs.id LIMIT ?",
                (
                    *_ENDED_INPUT,
                    *_ENDED_JOB,
                    self.node,
                    self._gone_before(now, stale_after),
                    limit,
                ),
            ).fetchall()
        return [
            DueCallback(
                row["input_id"],
                row["callback_url"],
                row["job_id"],
                row["finished_at"],
                row["relative"],
            )
            for row in rows
        ]

    @patient
    def claim_callback(self, due: DueCallback, stale_after: float = 60.0) -> bool:
        """This node posts `due`, unless another live host claimed it first, it
        was posted, or the job ended again meanwhile. True: post it, then
        `finish_callback` (or `release_callback`)."""
        with self._write() as db:
            now = self.backend.now(db)
            claimed = db.execute(
                "UPDATE inputs SET callback_claim = ?, callback_claim_end = ? "
                "WHERE id = ? AND callback_url = ? "
                "AND (callback_end IS NULL OR callback_end != ?) "
                "AND EXISTS (SELECT 1 FROM jobs WHERE jobs.id = inputs.job_id "
                "AND jobs.finished_at = ? AND jobs.state IN (?, ?)) "
                f"AND NOT {self._held_elsewhere('?')}",
                (
                    self.node,
                    due.end,
                    due.input_id,
                    due.url,
                    due.end,
                    due.end,
                    *_ENDED_JOB,
                    self.node,
                    due.end,
                    self._gone_before(now, stale_after),
                ),
            ).rowcount
        return int(claimed) == 1

    @patient
    def finish_callback(self, due: DueCallback) -> None:
        """This end of the job is posted (or given up on): not due again."""
        with self._write() as db:
            db.execute(
                "UPDATE inputs SET callback_end = ?, callback_claim = NULL, "
                "callback_claim_end = NULL WHERE id = ? AND callback_claim = ? "
                "AND callback_claim_end = ?",
                (due.end, due.input_id, self.node, due.end),
            )

    @patient
    def release_callback(self, due: DueCallback) -> None:
        """Give up this node's claim without posting (it is stopping): due again,
        for any host."""
        with self._write() as db:
            db.execute(
                "UPDATE inputs SET callback_claim = NULL, callback_claim_end = NULL "
                "WHERE id = ? AND callback_claim = ? AND callback_claim_end = ?",
                (due.input_id, self.node, due.end),
            )
