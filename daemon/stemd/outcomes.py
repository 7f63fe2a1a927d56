"""How a job ends, as a worker records it: done (commit, dispose of the source,
serve the copies waiting for it), requeued, retried after a backoff, waiting
for space, or failed. Every write names the worker's claim on the job: once the
job was taken over (its lease ran out), the ledger refuses them (LeaseLost) and
the worker drops the job without a trace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import PurePosixPath

from stemd.config import Config
from stemd.crash import crash_point
from stemd.errors import InputError, JobCancelled, NoSpace, StemdError
from stemd.intake import Intake
from stemd.ledger import Fault, InputRecord, InputState, JobRecord, LeaseLost, Ledger
from stemd.logs import event, job_event
from stemd.outbox import is_disk_full

log = logging.getLogger("stemd")

RETRY_MAX_DELAY_S = 3600.0
SPACE_WAIT_MAX_S = 300.0  # a full outbox is checked again at least this often


def retry_delay(attempts: int, base: float) -> float:
    """base, 2 x base, 4 x base ... (10s, 20s, 40s by default), capped at an hour."""
    return float(min(RETRY_MAX_DELAY_S, base * 2 ** max(0, attempts - 1)))


class Outcomes:
    """One worker's writer of job endings (the worker and its encoder thread)."""

    def __init__(
        self, worker: str, ledger: Ledger, intake: Intake, release: Callable[[int], None]
    ) -> None:
        self.worker = worker  # its name, in the done event
        self.ledger = ledger
        self.intake = intake
        self._release = release  # called with a job id once its ending is written
        self._space_waits: dict[int, int] = {}  # job id -> times it found the outbox full

    def _done_with(self, job: JobRecord) -> None:
        self._release(job.id)

    def failed(self, job: JobRecord, relative: str, err: BaseException, config: Config) -> bool:
        """Requeue, retry or fail a job after `err`; False for errors nobody expects."""
        try:
            if isinstance(err, LeaseLost):
                raise err
            if isinstance(err, JobCancelled):
                self.ledger.requeue(job, None, delay=0.0, count_attempt=False)
                log.info("%s: interrupted; requeued", relative)
            elif isinstance(err, InputError):
                self.fail(job, err.reason, Fault.INPUT)
            elif isinstance(err, StemdError | OSError | RuntimeError | ValueError | MemoryError):
                if self.requeue_if_folder_missing(job):
                    pass
                elif is_disk_full(err):
                    self.wait_for_space(job, err, config)
                else:
                    self.retry_or_fail(job, f"{type(err).__name__}: {err}", config)
            else:
                return False
        except LeaseLost:
            self.lost(job, relative)
        self._done_with(job)
        return True

    def lost(self, job: JobRecord, relative: str) -> None:
        log.warning(
            "%s: this worker's lease on it ran out and another took it over; "
            "dropping it here without writing anything",
            relative,
        )

    def requeue_if_folder_missing(self, job: JobRecord) -> bool:
        """A job that failed because the inbox or outbox went away is not at fault:
        it goes back to the queue, its attempt not counted, to run when they return."""
        missing = self.intake.folders.missing()
        if not missing:
            return False
        self.ledger.requeue(job, None, delay=0.0, count_attempt=False)
        log.warning(
            "%s: interrupted, the %s is gone; requeued until it is back",
            job.source,
            " and ".join(missing),
        )
        return True

    def wait_for_space(self, job: JobRecord, err: BaseException, config: Config) -> None:
        """Outbox full: requeue without counting an attempt, checking again after
        source.retry_delay, twice that, ... at most every SPACE_WAIT_MAX_S.
        Nothing partial is left: the temp folder was discarded."""
        waits = self._space_waits.get(job.id, 0) + 1
        self._space_waits[job.id] = waits
        delay = min(SPACE_WAIT_MAX_S, retry_delay(waits, config.source.retry_delay))
        reason = str(err) if isinstance(err, NoSpace) else f"the outbox is full ({err})"
        self.ledger.requeue(job, reason, delay=delay, count_attempt=False)
        job_event(
            logging.WARNING,
            "retried",
            f"{job.source}: {reason}; trying again in {delay:.0f}s",
            job,
            job.source,
        )

    def complete(
        self,
        job: JobRecord,
        source: InputRecord,
        folder: PurePosixPath,
        target: PurePosixPath | None,
        audio_seconds: float | None = None,
        elapsed: float | None = None,
    ) -> None:
        """The stems are in place (or skipped): commit, dispose, serve the copies.
        No timing for stems adopted after a restart (nothing was timed)."""
        intake, ledger = self.intake, self.ledger
        try:
            if target is None:
                published, copies = ledger.complete(job, source.id, "")
                ledger.finish_input(
                    source.id,
                    InputState.SKIPPED,
                    None,
                    f"{folder} exists and output.on_conflict is skip",
                )
                log.warning(
                    "%s: %s exists; not written (output.on_conflict: skip)",
                    source.relative,
                    folder,
                )
            else:
                published, copies = ledger.complete(job, source.id, target.as_posix())
                event(
                    logging.INFO,
                    "done",
                    f"{source.relative}: stems in {target}",
                    job=job.id,
                    sha256=job.sha256,
                    source=source.relative,
                    audio_seconds=audio_seconds,
                    elapsed=elapsed,
                    worker=self.worker,
                )
        except LeaseLost:
            # our stems are published, but the job is another worker's now:
            # it finds them there (published before a restart) and adopts them
            self.lost(job, source.relative)
            self._done_with(job)
            return
        self._done_with(job)
        crash_point("committed")
        # file work after the commit, under no lock: the inputs that wait for copies
        # were read with the job's row locked, and any input attached after it sees
        # the job done and is served by its own attach (stemd.ledger.jobs.attach)
        intake.dispose(source, success=True)
        for other in copies:
            try:
                intake.reuse(other.id, published)
            except (StemdError, OSError) as err:  # the job is done: this copy waits
                log.error(
                    "%s: cannot serve its copy of %s now (%s); trying again later",
                    other.relative,
                    published.output_dir,
                    err,
                )

    def fail(self, job: JobRecord, reason: str, fault: Fault = Fault.STEMD) -> None:
        failed_inputs = self.ledger.fail(job, reason, fault)
        job_event(logging.ERROR, "failed", f"{job.source}: {reason}", job, job.source)
        for record in failed_inputs:
            self.intake.dispose(record, success=False)

    def retry_or_fail(self, job: JobRecord, reason: str, config: Config) -> None:
        max_attempts = config.source.max_attempts
        if job.attempts >= max_attempts:
            self.fail(job, f"{reason} (after {job.attempts} attempts)")
            return
        delay = retry_delay(job.attempts, config.source.retry_delay)
        self.ledger.requeue(job, reason, delay=delay, count_attempt=True)
        job_event(
            logging.WARNING,
            "retried",
            f"{job.source}: {reason}; retrying in {delay:.0f}s "
            f"(attempt {job.attempts} of {max_attempts})",
            job,
            job.source,
        )
