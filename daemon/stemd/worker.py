"""A worker thread: runs jobs on its own model instance, one at a time.

A daemon has one worker per device and model.workers (stemd.workers starts
them). Between jobs a worker lets intake (stemd.intake, shared) hash and attach
the inputs that have settled. It claims a job under a lease (the ledger), then:
decode -> separate -> encode into a temp folder -> check the lease is still
ours -> publish -> commit (stemd.outcomes) -> intake disposes of the source and
serves the copies waiting for it. Its model is only used from this thread, so
its device never runs two of its jobs at once.

Decoding and encoding overlap the model's work, each on a thread of its own with
room for one track: while job N separates, the next queued job's input is
decoded ("decode-ahead"), and job N-1's stems are encoded and published
("finish-behind"). The tracks themselves wait in work files on local disk
(stemd.separation.workfiles, one folder per job under state_dir/work), so memory holds a
block per thread, not a track: at most three work folders exist, the one
decoded ahead, the one in the model, the one being written.

A job is rendered with its own output parameters (its key's: stemd.profile), so
the jobs of one content asked for different stems or formats (rules, uploads'
choices: stemd.choices) share one separation: the folder being written is kept
(`Kept`) until the worker claims a job of other content or runs out of work,
and the claim prefers the kept content's other jobs, which are rendered from it
without the model.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stemd.allocator import release_free_memory
from stemd.choices import output_of_params
from stemd.config import Config
from stemd.crash import crash_point
from stemd.decodeahead import DecodeAhead
from stemd.errors import ConfigError, StemdError
from stemd.folders import SharedFolders
from stemd.intake import Intake, stat_of
from stemd.ledger import (
    InputRecord,
    InputState,
    JobRecord,
    LeaseLost,
    Ledger,
    LedgerUnavailable,
)
from stemd.logs import job_event
from stemd.outbox import (
    Outbox,
    TrackNames,
    track_folder,
)
from stemd.outcomes import Outcomes
from stemd.profile import render_profile
from stemd.separation.engine import EXPORTS, Engine, ModelInfo
from stemd.separation.workfiles import WorkArea
from stemd.track import (
    Loaded,
    RenderRequest,
    StemFiles,
    Timing,
    check_room,
    separate_track,
    write_stems,
)

log = logging.getLogger("stemd")

IDLE_WAIT_S = 1.0
PROGRESS_WRITE_INTERVAL_S = 1.0


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
    config: Config  # the job's own: its output parameters over the worker's config
    keep: bool = False  # the work folder is the worker's Kept: left for the next job


@dataclass(frozen=True)
class Kept:
    """A separation's work folder kept after its job for other jobs of the same
    content and separation (other stems, formats): rendered from it, not
    separated again."""

    sha256: str
    separation: str
    stems: StemFiles
    loaded: Loaded
    job_id: int  # whose separation it is

    def discard(self) -> None:
        self.stems.close()
        self.loaded.work.remove()


class Worker(threading.Thread):
    def __init__(
        self,
        name: str,
        ledger: Ledger,
        config: Config,
        engine: Engine,
        intake: Intake,
        device: str | None = None,
    ) -> None:
        """`name` (w0, w1 ...) names it in leases and status; `device` is its
        own (None: model.device's first)."""
        super().__init__(name=f"stemd-worker-{name}", daemon=True)
        self.worker_name = name
        self.device_name = device
        self.ledger = ledger
        self.intake = intake
        self.config = config
        self.engine = engine
        self.outbox = Outbox(config.outbox, config.output, ledger.node)
        # the output profile of its own config and model (several workers apply a
        # reload one by one): it claims only jobs of its separation (the model's part)
        self.profile = render_profile(config, engine.info)
        self._kept: Kept | None = None  # the last separation, for its content's other jobs
        self.wake = threading.Event()
        self.stop_requested = threading.Event()  # finish the running job, take no more
        # shutdown's "stop now": every job this worker has in hand (the one on the
        # model, the one its encoder writes) stops at its next chunk or block. Never
        # cleared: the worker ends. A job's own stop is its lease lost (_lost).
        self.shutdown_cancel = threading.Event()
        self.current: Current | None = None
        self._new_config: Config | None = None
        self._config_lock = threading.Lock()
        self._last_progress_write = 0.0
        # jobs it has claimed and not yet ended (the one separating, the one
        # finishing behind), whose leases the daemon renews while it beats
        self._held: dict[int, JobRecord] = {}
        self._lost: set[int] = set()  # held jobs whose lease ran out: dropped
        self._held_lock = threading.Lock()
        self.outcomes = Outcomes(name, ledger, intake, self._release)
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="stemd-encode")
        # state_dir never changes on reload. Work folders are named by worker and
        # process: a new run never reuses the name of one a killed run left (the
        # service clears those before workers start)
        self.ahead = DecodeAhead(WorkArea(config.state_dir), f"{name}-{os.getpid()}")
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
        self.shutdown_cancel.set()
        self.wake.set()

    # -- leases -----------------------------------------------------------------

    def held_claims(self) -> dict[int, int]:
        """{job id: claim} of the jobs whose leases are this worker's to renew."""
        with self._held_lock:
            return {job_id: job.claim for job_id, job in self._held.items()}

    def leases_lost(self, job_ids: set[int]) -> None:
        """The daemon could not renew these (taken over while we were away, a
        SIGSTOP, a long network cut): stop them at the next chunk, write nothing."""
        with self._held_lock:
            for job_id in job_ids:
                if self._held.pop(job_id, None) is not None:
                    self._lost.add(job_id)

    def _hold(self, job: JobRecord) -> None:
        with self._held_lock:
            self._held[job.id] = job

    def _release(self, job_id: int) -> None:
        with self._held_lock:
            self._held.pop(job_id, None)
            self._lost.discard(job_id)

    def _keep_waiting(self) -> bool:
        """While the ledger is unreachable: wait, unless stemd must stop now."""
        return not self.shutdown_cancel.is_set()

    # -- thread body ---------------------------------------------------------

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def run(self) -> None:
        with self.ledger.wait_here(self._keep_waiting):
            self._run()

    def _run(self) -> None:
        away = False
        try:
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
                kept = self._kept
                job = self.ledger.claim_next(
                    self.worker_name,
                    self.config.ledger.lease,
                    profile=self.profile,
                    prefer=kept.sha256 if kept is not None else None,
                )
                if job is not None:
                    self._hold(job)
                    crash_point("claimed")
                    self._run_job(job)
                    self._holding_memory = True
                    continue
                self._drop_kept()  # no job of its content is left to render from it
                self._release_memory()
                self.wake.wait(IDLE_WAIT_S)
                self.wake.clear()
            self._wait_finishing()  # the last job's stems are published before we stop
        except LedgerUnavailable as err:
            # only raised once stemd must stop: what is in hand stays running in
            # the ledger, and is taken over (or recovered here) when its lease runs out
            log.warning("stopping while the ledger is unreachable (%s)", err)
        except BaseException as exc:  # the service sees this and stops with an error
            self.failure = exc
            log.critical("the worker stopped on an unexpected error: %s", exc, exc_info=True)
        finally:
            self.ahead.shutdown()  # stops between blocks, its folder removed when it ends
            self._drop_kept()
            self._encoder.shutdown(wait=True)

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
                # an export and auto's timing may take minutes: beat through them
                engine = Engine(
                    new.model, self.device_name, new.state_dir / EXPORTS, beat=self.beat
                )
            except StemdError as err:
                log.error("reload: keeping model %s: %s", self.config.model.name, err)
                new = new.model_copy(update={"model": self.config.model})
            else:
                self.engine = engine
                self._warm_up()
        try:  # stems the (new) model does not have would fail every job
            self.engine.check_stem(new.output.two_stems, "reload", "output.two_stems")
            self.engine.check_stems(new.output.stems, "reload", "output.stems")
        except ConfigError as err:
            log.error("reload: keeping the output settings: %s", err)
            new = new.model_copy(update={"output": self.config.output})
        self.ahead.drop()  # decoded under the old settings (rate, max_duration)
        self.config = new
        self.outbox = Outbox(new.outbox, new.output, self.ledger.node)
        self.profile = render_profile(new, self.engine.info)
        if self._kept is not None and self._kept.separation != self.profile.separation:
            self._drop_kept()  # another model now: nothing will be rendered from it
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
            self.ledger.set_progress(job, fraction)

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
        max_lost = self.config.source.max_attempts
        if job.lost >= max_lost:
            self._end_without_running(
                job,
                f"its worker was lost {job.lost} times while separating it (hosts that died "
                "or were cut off, or a track that makes stemd crash)",
            )
            return
        source = self._source_for(job)
        if source is None:
            self._end_without_running(
                job, "the source file is gone or changed before it was separated"
            )
            return
        self.current = Current(source.relative, 0.0, job.id)
        info, outbox = self.engine.info, self.outbox
        config, params = self._render_settings(job)  # what the job's key says
        request = RenderRequest(
            source.path, source.relative, job.sha256, job.profile, params, f"job{job.id}"
        )
        kept = self._kept
        if kept is not None and (
            kept.sha256 != job.sha256 or kept.separation != self._separation_of(job)
        ):
            self._drop_kept()
            kept = None
        try:
            if self._settled_before_separating(job, source):
                return
            if kept is not None:
                self._render_kept(job, source, request, kept, config)
                return
            job_event(
                logging.INFO,
                "started",
                f"{source.relative}: separating (attempt {job.attempts}, worker "
                f"{self.worker_name} on {info.device})",
                job,
                source.relative,
                self.worker_name,
            )
            started, model_before = time.monotonic(), self.engine.model_seconds
            loaded = self._decoded(job, source, info, config)
            handed_on = False
            try:
                self._decode_ahead(job)  # the next job's input, while the model works
                check_room(info, outbox, config, loaded, source.relative)
                stems = separate_track(
                    self.engine,
                    loaded,
                    progress=lambda f: self._progress(job, f),
                    cancelled=self._cancelled,
                )
                timing = Timing(
                    time.monotonic() - started, self.engine.model_seconds - model_before
                )
                done = Separated(
                    job, source, request, stems, loaded, timing, info, outbox, config, keep=True
                )
                self._finish_behind(done)
                handed_on = True  # the Kept's now: dropped by the worker
                # kept for the same content's other jobs until the next claim (set once
                # handed on: a failure before that removes the folder, see finally)
                self._kept = Kept(job.sha256, self._separation_of(job), stems, loaded, job.id)
            finally:
                if not handed_on:
                    loaded.work.remove()
        except BaseException as err:
            if not self.outcomes.failed(job, source.relative, self._why(job, err), config):
                raise
        finally:
            self.current = None

    def _render_settings(self, job: JobRecord) -> tuple[Config, dict[str, Any]]:
        """The config a job is rendered with (its own output parameters over this
        worker's config) and those parameters; a job made before jobs kept them is
        keyed by this worker's own profile (the claim says so)."""
        params = job.params
        if params is None:
            return self.config, self.profile.params
        output = output_of_params(self.config.output, params)
        return self.config.model_copy(update={"output": output}), params

    def _separation_of(self, job: JobRecord) -> str:
        return job.separation or self.profile.separation

    def _render_kept(
        self,
        job: JobRecord,
        source: InputRecord,
        request: RenderRequest,
        kept: Kept,
        config: Config,
    ) -> None:
        """A job of content just separated (other stems or format): rendered from
        the kept stems on the encoder thread, without the model."""
        self.ahead.forget(source)
        job_event(
            logging.INFO,
            "started",
            f"{source.relative}: rendering from the separation of job {kept.job_id} "
            f"(same content and model; worker {self.worker_name})",
            job,
            source.relative,
            self.worker_name,
        )
        check_room(self.engine.info, self.outbox, config, kept.loaded, source.relative)
        done = Separated(
            job,
            source,
            request,
            kept.stems,
            kept.loaded,
            Timing(0.0, 0.0),
            self.engine.info,
            self.outbox,
            config,
            keep=True,
        )
        self._finish_behind(done)

    def _drop_kept(self) -> None:
        """Let the kept separation go: its folder is removed on the encoder thread,
        after the renders already handed to it (which read it)."""
        kept, self._kept = self._kept, None
        if kept is None:
            return
        try:
            self._encoder.submit(kept.discard)
        except RuntimeError:  # the encoder is shut down: nothing reads it any more
            kept.discard()

    def _why(self, job: JobRecord, err: BaseException) -> BaseException:
        """A job stopped because its lease was lost is LeaseLost, not cancelled."""
        with self._held_lock:
            lost = job.id in self._lost
        return LeaseLost(job.id, job.claim) if lost else err

    def _end_without_running(self, job: JobRecord, reason: str) -> None:
        try:
            if not self.outcomes.requeue_if_folder_missing(job):
                self.outcomes.fail(job, reason)
        except LeaseLost:
            self.outcomes.lost(job, job.source)
        self._release(job.id)

    # -- decode-ahead and finish-behind -------------------------------------------

    def _decoded(
        self, job: JobRecord, source: InputRecord, info: ModelInfo, config: Config
    ) -> Loaded:
        """The source decoded into a work folder: by the decode-ahead if it did
        this very version. A failed decode leaves no folder behind."""
        ahead = self.ahead.take(source)
        if ahead is not None:
            loaded: Loaded = self._wait(ahead)
            return loaded
        return self.ahead.decode(job.id, info, config, source.path, self._cancelled)

    def _decode_ahead(self, running: JobRecord) -> None:
        if self.ahead.busy or self.stop_requested.is_set():
            return
        # the running job is claimed: not among them; its content's other jobs are
        # rendered from its separation, not decoded again
        upcoming = self.ledger.next_queued(self.profile, running.sha256, self.worker_name)
        source = self._source_for(upcoming) if upcoming is not None else None
        if upcoming is None or source is None:
            return
        self.ahead.start(
            upcoming.id, source, self.engine.info, self.config, self.stop_requested.is_set
        )

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
        with self.ledger.wait_here(self._keep_waiting):
            self._write_and_publish(done)

    def _write_and_publish(self, done: Separated) -> None:
        job, source, outbox = done.job, done.source, done.outbox
        temp: Path | None = None
        try:
            rendered = write_stems(
                done.info,
                outbox,
                done.config,
                done.request,
                done.stems,
                done.loaded,
                done.timing,
                progress=lambda _f: self.beat(),  # a stem written: alive
                cancelled=lambda: self._job_stopped(job.id),
            )
            temp = rendered.temp
            crash_point("written")
            # fencing: a worker that was away past its lease publishes nothing
            # (the lease, renewed here, covers the rename)
            if not self.ledger.holds(job, done.config.ledger.lease):
                raise LeaseLost(job.id, job.claim)
            target = outbox.publish(rendered.temp, rendered.folder, job.sha256, job.profile)
            temp = None
            crash_point("renamed")
            self.outcomes.complete(
                job,
                source,
                rendered.folder,
                target,
                done.loaded.duration,
                done.timing.separated,
            )
        except BaseException as err:
            if not self.outcomes.failed(job, source.relative, self._why(job, err), done.config):
                raise
        finally:
            if temp is not None:
                outbox.discard(temp)
            if not done.keep:
                done.stems.close()
                done.loaded.work.remove()

    def _settled_before_separating(self, job: JobRecord, source: InputRecord) -> bool:
        """Whether the job's end is known before the model runs: stems a crash left
        between the folder rename and the ledger commit (adopted, not separated
        again), or a name on_conflict: skip would refuse anyway (nothing separated
        only to be thrown away)."""
        names = TrackNames.for_input(self.engine.info.folder, source.relative, job.sha256)
        folder = track_folder(self.config.output.layout, names)
        target = self.outbox.find_ours(folder, job.sha256, job.profile)
        if target is None and not self.outbox.would_skip(folder, job.sha256, job.profile):
            return False
        self.ahead.forget(source)  # if it was decoded ahead, for nothing: let it go now
        if target is not None:
            log.info(
                "%s: stems already in %s (published before a restart)", source.relative, target
            )
        self.outcomes.complete(job, source, folder, target)  # None: skipped, said there
        return True

    def _cancelled(self) -> bool:
        """Asked before each chunk: also a sign of life, so the longest silence
        while separating is one forward pass. A lost lease stops the job too."""
        current = self.current
        return self._job_stopped(current.job_id if current is not None else None)

    def _job_stopped(self, job_id: int | None) -> bool:
        self.beat()
        if self.shutdown_cancel.is_set():
            return True
        with self._held_lock:
            return job_id in self._lost
