"""The ledger's inputs: every file (or upload) seen, the stat cache that lets
rescans skip unchanged files without rehashing, which daemon hashes it, and
whether its source was disposed of."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stemd.errors import StateError
from stemd.ledger.backends import Db
from stemd.ledger.core import (
    FINISHED_INPUT_STATES,
    LedgerCore,
    patient,
)
from stemd.ledger.records import (
    ORIGIN_HTTP,
    ORIGIN_INBOX,
    FileStat,
    InputRecord,
    InputState,
    input_of,
    node_of,
)


class InputLedger(LedgerCore):
    @patient
    def known_versions(self, files: Sequence[tuple[Path, FileStat]]) -> set[Path]:
        """Which of these file versions were seen before, in one query: a scan asks
        a folder's files at a time (a few hundred), not one file at a time, so a
        big inbox on a LAN database costs a query per folder."""
        if not files:
            return set()
        wanted = {str(path): (path, stat) for path, stat in files}
        marks = ", ".join("?" for _ in wanted)
        with self._read() as db:
            rows = db.execute(
                f"SELECT path, dev, ino, size, mtime_ns FROM inputs WHERE path IN ({marks})",
                tuple(wanted),
            ).fetchall()
        known: set[Path] = set()
        for row in rows:
            path, stat = wanted[row["path"]]
            version = (self._dev(stat), stat.ino, stat.size, stat.mtime_ns)
            if (row["dev"], row["ino"], row["size"], row["mtime_ns"]) == version:
                known.add(path)
        return known

    @patient
    def add_input(
        self,
        path: Path,
        relative: str,
        stat: FileStat,
        origin: str = ORIGIN_INBOX,
        callback_url: str | None = None,
        *,
        choices: Mapping[str, Any] | None = None,
    ) -> InputRecord | None:
        """Register a settled file (an upload with the `choices` it was sent
        with; the URL to call when its job ends, if any). None if this exact
        version is already known (another host
        watching the same share may have registered it first)."""
        with self._write() as db:
            now = self.backend.now(db)
            row = db.execute(
                "INSERT INTO inputs (path, relative, dev, ino, size, mtime_ns, state, "
                "detected_at, updated_at, origin, node, choices, callback_url) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING RETURNING *",
                (
                    str(path),
                    relative,
                    self._dev(stat),
                    stat.ino,
                    stat.size,
                    stat.mtime_ns,
                    InputState.PENDING.value,
                    now,
                    now,
                    origin,
                    self.node,
                    json.dumps(dict(choices), sort_keys=True) if choices else None,
                    callback_url,
                ),
            ).fetchone()
        return input_of(row) if row else None

    @patient
    def pending_inputs(self, limit: int = 100, stale_after: float = 60.0) -> list[InputRecord]:
        """Settled inputs for this node to hash: those it registered; those of
        daemons not seen for `stale_after` seconds; and inbox files of daemons
        whose every worker is running a job. A daemon hashes between jobs, and a
        job may run for many minutes: an idle host takes such files over, or it
        would sit idle beside a queue that only a busy host can fill."""
        with self._write() as db:
            now = self.backend.now(db)
            gone_before = self._gone_before(now, stale_after)
            busy = self._busy_nodes(db, now, gone_before)
            marks = ", ".join("?" for _ in busy)
            from_busy = f" OR (origin = ? AND node IN ({marks}))" if busy else ""
            db.execute(
                "UPDATE inputs SET node = ? WHERE state = ? AND (node IS NULL OR node != ?) "
                "AND (NOT EXISTS (SELECT 1 FROM nodes WHERE nodes.node = inputs.node "
                f"AND nodes.seen_at >= ?){from_busy})",
                (
                    self.node,
                    InputState.PENDING.value,
                    self.node,
                    gone_before,
                    *([ORIGIN_INBOX, *busy] if busy else []),
                ),
            )
            rows = db.execute(
                "SELECT * FROM inputs WHERE state = ? AND node = ? ORDER BY id LIMIT ?",
                (InputState.PENDING.value, self.node, limit),
            ).fetchall()
        return [input_of(r) for r in rows]

    def _busy_nodes(self, db: Db, now: float, gone_before: float) -> list[str]:
        """Other live daemons none of whose workers is free to hash, as each
        last reported itself (a report comes as soon as a worker's job changes)."""
        rows = db.execute(
            "SELECT * FROM nodes WHERE node != ? AND seen_at >= ?", (self.node, gone_before)
        ).fetchall()
        return [row["node"] for row in rows if node_of(row, now).busy]

    @patient
    def holds_input(self, input_id: int) -> bool:
        """Whether this node still holds a pending input it is about to hash
        (an idle host may have taken it over while this one was busy). A ledger
        no other daemon shares has no one to take it: no query."""
        if not self.backend.shared:
            return True
        with self._read() as db:
            row = db.execute(
                "SELECT 1 FROM inputs WHERE id = ? AND state = ? AND node = ?",
                (input_id, InputState.PENDING.value, self.node),
            ).fetchone()
        return row is not None

    @patient
    def get_input(self, input_id: int) -> InputRecord:
        with self._read() as db:
            row = db.execute("SELECT * FROM inputs WHERE id = ?", (input_id,)).fetchone()
        if row is None:
            raise StateError(f"input {input_id} is not in the ledger")
        return input_of(row)

    @patient
    def inputs_of(self, job_id: int) -> list[InputRecord]:
        with self._read() as db:
            rows = db.execute(
                "SELECT * FROM inputs WHERE job_id = ? ORDER BY id", (job_id,)
            ).fetchall()
        return [input_of(r) for r in rows]

    def fail_input(self, input_id: int, error: str) -> None:
        self.finish_input(input_id, InputState.FAILED, None, error)

    @patient
    def finish_input(
        self, input_id: int, state: InputState, output_dir: str | None, error: str | None = None
    ) -> None:
        """Set an input's end state; `output_dir` None keeps what was recorded."""
        with self._write() as db:
            now = self.backend.now(db)
            db.execute(
                "UPDATE inputs SET state = ?, output_dir = coalesce(?, output_dir), error = ?, "
                "updated_at = ? WHERE id = ?",
                (state.value, output_dir, error, now, input_id),
            )
            if state in (InputState.PUBLISHED, InputState.DUPLICATE):
                self._supersede(db, input_id, now)

    @patient
    def mark_disposed(self, input_id: int) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE inputs SET disposed = 1, updated_at = ? WHERE id = ?",
                (self.backend.now(db), input_id),
            )

    @patient
    def undisposed_inputs(self, stale_after: float = 60.0) -> list[InputRecord]:
        """Finished inputs whose source was not yet kept/moved/deleted (a crash in
        between): this node's, and those of daemons not seen for `stale_after`."""
        with self._read() as db:
            now = self.backend.now(db)
            rows = db.execute(
                "SELECT * FROM inputs WHERE disposed = 0 AND state IN (?, ?, ?, ?) "
                "AND (node IS NULL OR node = ? OR NOT EXISTS (SELECT 1 FROM nodes "
                "WHERE nodes.node = inputs.node AND nodes.seen_at >= ?)) ORDER BY id",
                (*FINISHED_INPUT_STATES, self.node, self._gone_before(now, stale_after)),
            ).fetchall()
        return [input_of(r) for r in rows]

    @patient
    def uploads_in_use(self) -> set[Path]:
        """Spool files of this node's uploads that may still be read: not yet
        separated, or failed (a retry reads them again)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT path FROM inputs WHERE origin = ? AND state IN (?, ?, ?) "
                "AND (node IS NULL OR node = ?)",
                (
                    ORIGIN_HTTP,
                    InputState.PENDING.value,
                    InputState.ATTACHED.value,
                    InputState.FAILED.value,
                    self.node,
                ),
            ).fetchall()
        return {Path(row["path"]) for row in rows}
