"""The state every route shares: the daemon, the spool, events, metrics, the
token; and the job as the API shows it."""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from stemd.audio import probe_ffprobe
from stemd.config import Config
from stemd.errors import InputError, StemdError
from stemd.http.events import EventHub
from stemd.http.metrics import Metrics
from stemd.http.spool import Spool, Spooled
from stemd.http.view import DaemonView, IntakeView, WorkersView
from stemd.ledger import InputRecord, InputState, JobRecord, JobState, Ledger
from stemd.manifest import manifest_stems
from stemd.track import check_input

API = "/api/v1"
T = TypeVar("T")
RETRY_AFTER_S = 30  # what a 503 tells a client to wait
# nginx's "client closed request": nobody reads it, but /metrics counts it so
CLIENT_GONE = 499

log = logging.getLogger("stemd")


@dataclass
class Context:
    daemon: DaemonView
    spool: Spool
    hub: EventHub
    metrics: Metrics
    token: str | None
    # host names the server answers to (addresses always); None: any (`*`)
    allowed_hosts: frozenset[str] | None = frozenset({"localhost"})
    _answer_slots: asyncio.Semaphore | None = field(default=None, repr=False)

    def answer_slots(self) -> asyncio.Semaphore:
        """/predict answers built at once (http.predict_answers); made on the loop."""
        if self._answer_slots is None:
            self._answer_slots = asyncio.Semaphore(self.config.http.predict_answers)
        return self._answer_slots

    # -- the daemon's parts, or 503 while it has none ---------------------------

    @property
    def config(self) -> Config:
        return self.daemon.config

    def _running(self, part: T | None) -> T:
        if part is None or self.daemon.stopping:
            raise unavailable("stemd is stopping")
        return part

    @property
    def ledger(self) -> Ledger:
        return self._running(self.daemon.ledger)

    @property
    def workers(self) -> WorkersView:
        return self._running(self.daemon.workers)

    @property
    def intake(self) -> IntakeView:
        return self._running(self.daemon.intake)

    # -- jobs ---------------------------------------------------------------

    def job(self, job_id: int) -> JobRecord:
        try:
            return self.ledger.get_job(job_id)
        except StemdError:
            raise HTTPException(404, f"no job {job_id}; list them at {API}/jobs") from None

    def stem_files(self, job: JobRecord, folder: str | None = None) -> dict[str, Path]:
        """stem name -> its file, from the manifest of the job's folder (or `folder`);
        nothing when that manifest names anything but plain files of its own folder
        (stemd.manifest: it is on the share, and may have been edited)."""
        where = folder or job.output_dir
        if job.state is not JobState.DONE or not where:
            return {}
        outbox = self.config.outbox
        return manifest_stems(outbox / where, outbox) or {}

    def job_json(self, job: JobRecord) -> dict[str, Any]:
        url = f"{API}/jobs/{job.id}"
        stems = self.stem_files(job)
        progress = job.progress
        workers = self.daemon.workers
        for worker in workers.busy() if workers is not None else []:
            current = worker.current
            if current is not None and current.job_id == job.id and job.state is JobState.RUNNING:
                progress = current.progress  # fresher than the ledger's (written once a second)
        return {
            "id": job.id,
            "state": job.state.value,
            "progress": round(progress, 4),
            "queue_position": self.ledger.queue_position(job),
            "source": job.source,
            "sha256": job.sha256,
            "attempts": job.attempts,
            "error": job.error,
            # a failure's cause: "input" (the file; the same bytes fail again) or "stemd"
            "fault": job.fault.value if job.fault else None,
            # a failure taken off the list (stemd dismiss, the dismiss route, or its
            # file replaced by good audio): not counted, listed only when asked for
            "dismissed": job.state is JobState.FAILED
            and not self.ledger.failure_is_current(job.id),
            "created": job.created_at,
            "started": job.started_at,
            "finished": job.finished_at,
            "output_dir": job.output_dir or None,
            "url": url,
            "stems": {stem: f"{url}/stems/{stem}" for stem in stems},
            "zip": f"{url}/stems.zip" if stems else None,
        }

    # -- uploads --------------------------------------------------------------

    def check_queue(self) -> None:
        """503 with Retry-After while more jobs wait than http.max_queue."""
        limit = self.config.http.max_queue
        queued = self.ledger.counts()[JobState.QUEUED.value]
        if queued >= limit:
            raise unavailable(
                f"{queued} jobs are queued (http.max_queue is {limit}); try again later"
            )

    async def check(self, spooled: Spooled) -> Spooled:
        """Refuse (422, with the reason) what the inbox would refuse; the spool
        file goes with a refusal. A nameless upload is named for its content and
        what the probe found (`upload-<hash>.mp3`)."""
        try:
            if spooled.size == 0:
                raise HTTPException(422, f"{spooled.name}: the file is empty")
            try:
                found = await run_in_threadpool(check_input, spooled.path, self.config)
                if spooled.nameless and not found.codec:  # read in-process: no codec name
                    found = await run_in_threadpool(probe_ffprobe, spooled.path)
            except InputError as err:
                raise HTTPException(422, f"{spooled.name}: {err.reason}") from None
            if spooled.nameless:
                spooled = await run_in_threadpool(spooled.named, found.extension)
        except BaseException:
            spooled.discard()
            raise
        return spooled

    async def take(self, spooled: Spooled) -> tuple[JobRecord, InputRecord]:
        """Hand a checked upload to the worker's intake: its job, and its input."""
        try:
            input_id = await run_in_threadpool(
                self.intake.take_upload, spooled.path, spooled.relative, spooled.sha256
            )
        except BaseException:
            spooled.discard()
            raise
        return await run_in_threadpool(self._job_of_input, input_id)

    def _job_of_input(self, input_id: int) -> tuple[JobRecord, InputRecord]:
        return self.ledger.job_of_input(input_id), self.ledger.get_input(input_id)

    def job_of_input(self, input_id: int) -> JobRecord:
        """The job an input waits for now (a merge may have moved it)."""
        return self.ledger.job_of_input(input_id)

    def outbox_free(self) -> int | None:
        try:
            return shutil.disk_usage(self.config.outbox).free
        except OSError:
            return None


def answered_at_once(record: InputRecord) -> bool:
    """The upload's content was separated before: its stems are there already."""
    return record.state in (InputState.PUBLISHED, InputState.DUPLICATE, InputState.SKIPPED)


def client_gone(what: str, received: int | None = None) -> HTTPException:
    """A client hung up before its whole body arrived (starlette's ClientDisconnect):
    one log line, no traceback; the spool has already dropped what came."""
    got = f" after {received} bytes" if received is not None else ""
    log.warning(
        "%s: the client went away%s, before the end of its body; nothing was kept", what, got
    )
    return HTTPException(CLIENT_GONE, f"{what}: the client went away")


def unavailable(message: str) -> HTTPException:
    return HTTPException(503, message, headers={"Retry-After": str(RETRY_AFTER_S)})


async def context(request: Request) -> Context:
    # async: FastAPI runs a sync dependency in the thread pool, and /ping must not
    # wait for a pool thread (they may all wait for a database that hangs)
    ctx: Context = request.app.state.stemd
    return ctx
