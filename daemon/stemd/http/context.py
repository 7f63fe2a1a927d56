"""The state every route shares: the daemon, the spool, events, metrics, the
token; the job as the API shows it (stemd.jobview, with a worker's live progress)."""

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
from stemd.callbacks.urls import CallbackRefused, check_callback_url, refusal
from stemd.choices import ChoiceError, Choices, choices_from_strings
from stemd.config import Config
from stemd.errors import InputError, StemdError
from stemd.http.events import EventHub
from stemd.http.metrics import Metrics
from stemd.http.spool import Spool, Spooled
from stemd.http.view import DaemonView, IntakeView, WorkersView
from stemd.jobview import API, job_json, stem_files
from stemd.ledger import InputRecord, InputState, JobRecord, JobState, Ledger
from stemd.track import check_input

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
        """stem name -> its file (stemd.jobview.stem_files)."""
        return stem_files(job, self.config.outbox, folder)

    def job_json(self, job: JobRecord) -> dict[str, Any]:
        progress = None
        workers = self.daemon.workers
        for worker in workers.busy() if workers is not None else []:
            current = worker.current
            if current is not None and current.job_id == job.id and job.state is JobState.RUNNING:
                progress = current.progress  # fresher than the ledger's (written once a second)
        return job_json(job, self.ledger, self.config.outbox, progress)

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

    def choices(self, values: dict[str, str]) -> Choices:
        """A job's choices sent as text (form fields, query parameters), checked
        against today's settings and model; 422 naming the key if refused. The
        callback URL is not among them (`check_callback`)."""
        try:
            choices = choices_from_strings(values)
            self.intake.check_choices(choices)
        except ChoiceError as err:
            raise HTTPException(422, str(err)) from None
        return choices

    async def take(
        self, spooled: Spooled, choices: Choices | None = None, callback_url: str | None = None
    ) -> tuple[JobRecord, InputRecord]:
        """Hand a checked upload to the worker's intake, with its choices (and its
        checked callback URL): its job, and its input."""
        try:
            input_id = await run_in_threadpool(
                self.intake.take_upload,
                spooled.path,
                spooled.relative,
                spooled.sha256,
                choices or {},
                callback_url,
            )
        except BaseException:
            spooled.discard()
            raise
        return await run_in_threadpool(self._job_of_input, input_id)

    async def check_callback(self, url: str | None, key: str = "callback_url") -> str | None:
        """The callback URL if stemd may call it (422 naming `key` and why if not);
        names are resolved off the event loop."""
        if url is None:
            return None
        try:
            return await run_in_threadpool(check_callback_url, url)
        except CallbackRefused as err:
            raise HTTPException(422, refusal(key, url, err)) from None

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
