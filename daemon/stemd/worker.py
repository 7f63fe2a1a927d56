"""The worker thread: runs jobs on the model, one at a time.

Between jobs it lets intake (stemd.intake) hash and attach the inputs that have
settled. For each queued job: decode -> separate -> encode into a temp folder ->
publish -> ledger commit -> intake disposes of the source and serves the copies
waiting for it. The model is only ever used from this thread, so the device never
runs two jobs at once.

Decoding and encoding overlap the model's work, each on a thread of its own with
room for one track: while job N separates, the next queued job's input is
decoded ("decode-ahead"), and job N-1's stems are encoded and published
("finish-behind"). The tracks themselves wait in work files on local disk
(stemd.workfiles, one folder per job under state_dir/work), so memory holds a
block per thread, not a track: at most three work folders exist, the one
decoded ahead, the one in the model, the one being written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from stemd.allocator import release_free_memory
from stemd.config import Config
from stemd.crash import crash_point
from stemd.engine import Engine, ModelInfo
from stemd.errors import InputError, JobCancelled, NoSpace, StemdError
from stemd.folders import SharedFolders
from stemd.intake import Intake, job_event, stat_of
from stemd.ledger import (
    FileStat,
    InputRecord,
    InputState,
    JobRecord,
    Ledger,
)
from stemd.logs import event
from stemd.outbox import (
    Outbox,
    TrackNames,
    is_disk_full,
    track_folder,
)
from stemd.track import (
    Loaded,
    RenderRequest,
    StemFiles,
    Timing,
    check_room,
    decode_track,
    separate_track,
    write_stems,
)
from stemd.workfiles import WorkArea

log = logging.getLogger("stemd")

RETRY_MAX_DELAY_S = 3600.0
SPACE_WAIT_MAX_S = 300.0  # a full outbox is checked again at least this often
IDLE_WAIT_S = 1.0
PROGRESS_WRITE_INTERVAL_S = 1.0


def retry_delay(attempts: int, base: float) -> float:
    """base, 2 x base, 4 x base ... (10s, 20s, 40s by default), capped at an hour."""
    return float(min(RETRY_MAX_DELAY_S, base * 2 ** max(0, attempts - 1)))


@dataclass
class Current:
    source: str
    progress: float
    job_id: int = 0


@dataclass(frozen=True)
class Separated:
    """A job's stems in their work files, handed to the encoder thread with what
    writing them needs (the model, outbox and config of the moment: a reload may
    replace them). The encoder thread removes the work folder."""

    job: JobRecord
    source: InputRecord
    request: RenderRequest
    stems: StemFiles
    loaded: Loaded
    timing: Timing
    info: ModelInfo
    outbox: Outbox
    config: Config


@dataclass(frozen=True)
class DecodedAhead:
    """The next queued input, decoding on the decoder thread into a work folder
    of its own: this version of it."""

    input_id: int
    stat: FileStat
    loaded: Future[Loaded]
    dropped: threading.Event  # set: stop decoding (between blocks) and remove it


class Worker(threading.Thread):
    def __init__(self, ledger: Ledger, config: Config, engine: Engine, intake: Intake) -> None:
        super().__init__(name="stemd-worker", daemon=True)
        self.ledger = ledger
        self.intake = intake
        self.config = config
        self.engine = engine
        self.outbox = Outbox(config.outbox, config.output)
        self.wake = threading.Event()
        self.stop_requested = threading.Event()  # finish the running job, take no more
        self.cancel_requested = threading.Event()  # stop the running job at the next chunk
        self.current: Current | None = None
        self._new_config: Config | None = None
        self._config_lock = threading.Lock()
        self._last_progress_write = 0.0
        self._space_waits: dict[int, int] = {}  # job id -> times it found the outbox full
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="stemd-decode")
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="stemd-encode")
        self._ahead: DecodedAhead | None = None
        self.work_area = WorkArea(config.state_dir)  # state_dir never changes on reload
        self._work_count = 0  # makes each work folder's name new
        self._finishing: Future[None] | None = None
        self._holding_memory = True  # the warm-up's, then each job's (see _release_memory)
        self.failure: BaseException | None = None
        self.warm_up_seconds: float | None = None  # for /metrics
        # time.monotonic() of the last sign of life, read by the service's watchdog
        self.heartbeat = time.monotonic()
        intake.on_arrival(self.wake.set)

    @property
    def folders(self) -> SharedFolders:
        return self.intake.folders

    # -- control from the service thread ------------------------------------

    def request_reload(self, config: Config) -> None:
        """Apply a new config between jobs (reloading the model if it changed)."""
        with self._config_lock:
            self._new_config = config
        self.wake.set()

    def request_stop(self) -> None:
        self.stop_requested.set()
        self.wake.set()

    def request_cancel(self) -> None:
        self.cancel_requested.set()
        self.wake.set()

    # -- thread body ---------------------------------------------------------

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def run(self) -> None:
        away = False
        try:
            self._clear_work_area()
            self._warm_up()
            self.intake.dispose_leftovers()
            while not self.stop_requested.is_set():
                self.beat()
                self._apply_new_config()
                if self.folders.missing():
                    # a share is away: wait (the service logs it) rather than fail
                    # every queued job for a missing source or outbox
                    away = True
                    self.wake.wait(IDLE_WAIT_S)
                    self.wake.clear()
                    continue
                if away:  # back: move/delete the sources that could not be reached
                    away = False
                    self.intake.dispose_leftovers()
                if self.intake.identify_pending(self.stop_requested.is_set, self.beat):
                    continue
                job = self.ledger.claim_next()
                if job is not None:
                    crash_point("claimed")
                    self._run_job(job)
                    self._holding_memory = True
                    continue
                self._release_memory()
                self.wake.wait(IDLE_WAIT_S)
                self.wake.clear()
            self._wait_finishing()  # the last job's stems are published before we stop
        except BaseException as exc:  # the service sees this and stops with an error
            self.failure = exc
            log.critical("the worker stopped on an unexpected error: %s", exc, exc_info=True)
        finally:
            self._drop_ahead()  # stops between blocks, its folder removed when it ends
            self._decoder.shutdown(wait=True, cancel_futures=True)
            self._encoder.shutdown(wait=True)

    def _clear_work_area(self) -> None:
        """Work files a crash left behind (no job is in hand yet)."""
        freed = self.work_area.clear()
        if freed:
            log.info("removed %.1f MiB of work files left by an earlier run", freed / 2**20)

    def _release_memory(self) -> None:
        """The queue is empty: once the last stems are written, hand the memory the
        model's passes kept for reuse (stemd.allocator) back to the system."""
        if not self._holding_memory:
            return
        self._wait_finishing()
        self._holding_memory = False
        if release_free_memory():
            log.debug("idle: free memory handed back to the system")

    def _warm_up(self) -> None:
        """The model's costly first pass, before any job is timed by it."""
        try:
            seconds = self.engine.warm_up(stop=self.stop_requested.is_set)
        except (RuntimeError, MemoryError) as err:  # a job would meet it too, and say so
            log.warning("model %s: the warm-up pass failed: %s", self.engine.info.name, err)
            return
        finally:
            self.beat()
        self.warm_up_seconds = seconds
        log.info("model %s warmed up in %.1fs", self.engine.info.name, seconds)

    def _apply_new_config(self) -> None:
        with self._config_lock:
            new, self._new_config = self._new_config, None
        if new is None:
            return
        if new.model != self.config.model:
            log.info("model settings changed; loading %s", new.model.name)
            try:
                engine = Engine(new.model)
            except StemdError as err:
                log.error("reload: keeping model %s: %s", self.config.model.name, err)
                new = new.model_copy(update={"model": self.config.model})
            else:
                self.engine = engine
                self._warm_up()
        self._drop_ahead()  # decoded under the old settings (rate, max_duration)
        self.config = new
        self.outbox = Outbox(new.outbox, new.output)
        self.intake.configure(new, self.engine.info)
        log.info("configuration applied")

    # -- run a job ------------------------------------------------------------

    def _progress(self, job: JobRecord, fraction: float) -> None:
        self.beat()
        crash_point("separating")
        if self.current is not None:
            self.current.progress = fraction
        if time.monotonic() - self._last_progress_write >= PROGRESS_WRITE_INTERVAL_S:
            self._last_progress_write = time.monotonic()
            self.ledger.set_progress(job.id, fraction)

    def _source_for(self, job: JobRecord) -> InputRecord | None:
        """The owner input if its file is still there unchanged, else another copy."""
        candidates = self.ledger.inputs_of(job.id)
        candidates.sort(key=lambda r: (r.id != job.owner_input, r.id))
        for record in candidates:
            if record.state is not InputState.ATTACHED and record.id != job.owner_input:
                continue
            try:
                if stat_of(record.path) == record.stat:
                    return record
            except OSError:
                continue
        return None

    def _run_job(self, job: JobRecord) -> None:
        source = self._source_for(job)
        if source is None:
            if self._requeue_if_folder_missing(job):
                return
            self._fail(job, "the source file is gone or changed before it was separated")
            return
        self.current = Current(source.relative, 0.0, job.id)
        info, outbox, config = self.engine.info, self.outbox, self.config
        key, params = self.intake.profile, self.intake.profile_params
        request = RenderRequest(
            source.path, source.relative, job.sha256, key, params, f"job{job.id}"
        )
        try:
            if self._published_before_crash(job, source):
                return
            job_event(
                logging.INFO,
                "started",
                f"{source.relative}: separating (attempt {job.attempts})",
                job,
                source.relative,
            )
            started, model_before = time.monotonic(), self.engine.model_seconds
            loaded = self._decoded(job, source, info, config)
            handed_on = False
            try:
                self._decode_ahead()  # the next job's input, while the model works
                check_room(info, outbox, config, loaded, source.relative)
                stems = separate_track(
                    self.engine,
                    loaded,
                    config,
                    progress=lambda f: self._progress(job, f),
                    cancelled=self._cancelled,
                )
                timing = Timing(
                    time.monotonic() - started, self.engine.model_seconds - model_before
                )
                done = Separated(job, source, request, stems, loaded, timing, info, outbox, config)
                self._finish_behind(done)
                handed_on = True  # the encoder thread removes the work folder
            finally:
                if not handed_on:
                    loaded.work.remove()
        except BaseException as err:
            if not self._job_failed(job, source.relative, err):
                raise
        finally:
            self.current = None
            self.cancel_requested.clear()

    def _job_failed(self, job: JobRecord, relative: str, err: BaseException) -> bool:
        """Requeue, retry or fail a job after `err`; False for errors nobody expects."""
        if isinstance(err, JobCancelled):
            self.ledger.requeue(job.id, None, delay=0.0, count_attempt=False)
            log.info("%s: interrupted; requeued", relative)
        elif isinstance(err, InputError):
            self._fail(job, err.reason)
        elif isinstance(err, StemdError | OSError | RuntimeError | ValueError | MemoryError):
            if self._requeue_if_folder_missing(job):
                pass
            elif is_disk_full(err):
                self._wait_for_space(job, err)
            else:
                self._retry_or_fail(job, f"{type(err).__name__}: {err}")
        else:
            return False
        return True

    # -- decode-ahead and finish-behind -------------------------------------------

    def _decoded(
        self, job: JobRecord, source: InputRecord, info: ModelInfo, config: Config
    ) -> Loaded:
        """The source decoded into a work folder: by the decode-ahead if it did
        this very version. A failed decode leaves no folder behind."""
        ahead = self._ahead
        if ahead is not None and (ahead.input_id, ahead.stat) == (source.id, source.stat):
            self._ahead = None
            loaded: Loaded = self._wait(ahead.loaded)  # (it removed its folder if it failed)
            return loaded
        self._drop_ahead()  # another job came first (a retry, a reload)
        return self._decode_into_work(job.id, info, config, source.path, self._cancelled)

    def _decode_into_work(
        self,
        job_id: int,
        info: ModelInfo,
        config: Config,
        path: Path,
        cancelled: Callable[[], bool],
    ) -> Loaded:
        self._work_count += 1
        work = self.work_area.job(f"job{job_id}-{self._work_count}")
        try:
            return decode_track(info, config, path, work, cancelled)
        except BaseException:
            work.remove()
            raise

    def _decode_ahead(self) -> None:
        if self._ahead is not None or self.stop_requested.is_set():
            return
        upcoming = self.ledger.next_queued()  # the running job is claimed: not among them
        source = self._source_for(upcoming) if upcoming is not None else None
        if upcoming is None or source is None:
            return
        dropped = threading.Event()
        future = self._decoder.submit(
            self._decode_into_work,
            upcoming.id,
            self.engine.info,
            self.config,
            source.path,
            lambda: dropped.is_set() or self.stop_requested.is_set(),
        )
        self._ahead = DecodedAhead(source.id, source.stat, future, dropped)

    def _drop_ahead(self) -> None:
        """Forget the input decoded ahead: stop it between blocks if it is
        decoding, and remove its work folder once it is done."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return
        ahead.dropped.set()
        if ahead.loaded.cancel():
            return  # never started: no folder

        def remove(future: Future[Loaded]) -> None:
            if not future.cancelled() and future.exception() is None:
                future.result().work.remove()

        ahead.loaded.add_done_callback(remove)

    def _finish_behind(self, done: Separated) -> None:
        """Hand the stems to the encoder thread; wait first for the one before, so
        only one track is being written at a time."""
        self._wait_finishing()
        self._finishing = self._encoder.submit(self._finish, done)

    def _wait_finishing(self) -> None:
        if self._finishing is not None:
            finishing, self._finishing = self._finishing, None
            self._wait(finishing)

    def _wait(self, future: Future[Any]) -> Any:
        """A future's result; the worker stays alive (heartbeat) while it waits."""
        while True:
            try:
                return future.result(timeout=IDLE_WAIT_S)
            except FutureTimeout:
                self.beat()

    def _finish(self, done: Separated) -> None:
        """On the encoder thread: write, publish, commit, dispose."""
        job, source, outbox = done.job, done.source, done.outbox
        temp: Path | None = None
        try:
            rendered = write_stems(
                done.info,
                outbox,
                done.config,
                done.request,
                done.stems,
                done.loaded.duration,
                done.timing,
                progress=lambda _f: self.beat(),  # a stem written: alive
                cancelled=self._cancelled,
            )
            temp = rendered.temp
            crash_point("written")
            target = outbox.publish(rendered.temp, rendered.folder, job.sha256, job.profile)
            temp = None
            crash_point("renamed")
            self._complete(job, source, rendered.folder, target, done)
        except BaseException as err:
            if not self._job_failed(job, source.relative, err):
                raise
        finally:
            if temp is not None:
                outbox.discard(temp)
            done.stems.close()
            done.loaded.work.remove()

    def _requeue_if_folder_missing(self, job: JobRecord) -> bool:
        """A job that failed because the inbox or outbox went away is not at fault:
        it goes back to the queue, its attempt not counted, to run when they return."""
        missing = self.folders.missing()
        if not missing:
            return False
        self.ledger.requeue(job.id, None, delay=0.0, count_attempt=False)
        log.warning(
            "%s: interrupted, the %s is gone; requeued until it is back",
            job.source,
            " and ".join(missing),
        )
        return True

    def _wait_for_space(self, job: JobRecord, err: BaseException) -> None:
        """Outbox full: requeue without counting an attempt, checking again after
        source.retry_delay, twice that, ... at most every SPACE_WAIT_MAX_S. Nothing partial is left:
        the temp folder was discarded."""
        waits = self._space_waits.get(job.id, 0) + 1
        self._space_waits[job.id] = waits
        delay = min(SPACE_WAIT_MAX_S, retry_delay(waits, self.config.source.retry_delay))
        reason = str(err) if isinstance(err, NoSpace) else f"the outbox is full ({err})"
        self.ledger.requeue(job.id, reason, delay=delay, count_attempt=False)
        job_event(
            logging.WARNING,
            "retried",
            f"{job.source}: {reason}; trying again in {delay:.0f}s",
            job,
            job.source,
        )

    def _published_before_crash(self, job: JobRecord, source: InputRecord) -> bool:
        """A crash between the folder rename and the ledger commit leaves finished
        stems the ledger does not know: adopt them instead of separating again."""
        names = TrackNames.for_input(self.engine.info.folder, source.relative, job.sha256)
        folder = track_folder(self.config.output.layout, names)
        target = self.outbox.find_ours(folder, job.sha256, job.profile)
        if target is None:
            return False
        log.info("%s: stems already in %s (published before a restart)", source.relative, target)
        self._complete(job, source, folder, target)
        return True

    def _cancelled(self) -> bool:
        """Asked before each chunk: also a sign of life, so the longest silence
        while separating is one forward pass."""
        self.beat()
        return self.cancel_requested.is_set()

    def _complete(
        self,
        job: JobRecord,
        source: InputRecord,
        folder: PurePosixPath,
        target: PurePosixPath | None,
        separated: Separated | None = None,
    ) -> None:
        """The stems are in place (or skipped): commit, dispose, serve the copies.
        `separated` is None for stems adopted after a restart (nothing was timed)."""
        with self.intake.serve_lock:
            if target is None:
                self.ledger.complete(job.id, source.id, "")
                self.ledger.finish_input(
                    source.id,
                    InputState.SKIPPED,
                    None,
                    f"{folder} exists and output.on_conflict is skip",
                )
                log.warning(
                    "%s: %s exists; not written (output.on_conflict: skip)", source.relative, folder
                )
            else:
                self.ledger.complete(job.id, source.id, target.as_posix())
                event(
                    logging.INFO,
                    "done",
                    f"{source.relative}: stems in {target}",
                    job=job.id,
                    sha256=job.sha256,
                    source=source.relative,
                    audio_seconds=separated.loaded.duration if separated else None,
                    elapsed=separated.timing.separated if separated else None,
                )
            crash_point("committed")
            self.intake.dispose(source, success=True)
            published = self.ledger.get_job(job.id)  # now with its output folder
            for other in self.ledger.inputs_of(job.id):
                if other.state is InputState.ATTACHED:
                    self.intake.reuse(other.id, published)

    def _fail(self, job: JobRecord, reason: str) -> None:
        failed_inputs = self.ledger.fail(job.id, reason)
        job_event(logging.ERROR, "failed", f"{job.source}: {reason}", job, job.source)
        for record in failed_inputs:
            self.intake.dispose(record, success=False)

    def _retry_or_fail(self, job: JobRecord, reason: str) -> None:
        if job.attempts >= self.config.source.max_attempts:
            self._fail(job, f"{reason} (after {job.attempts} attempts)")
            return
        delay = retry_delay(job.attempts, self.config.source.retry_delay)
        self.ledger.requeue(job.id, reason, delay=delay, count_attempt=True)
        job_event(
            logging.WARNING,
            "retried",
            f"{job.source}: {reason}; retrying in {delay:.0f}s "
            f"(attempt {job.attempts} of {self.config.source.max_attempts})",
            job,
            job.source,
        )
