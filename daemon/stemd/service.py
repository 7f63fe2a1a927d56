"""The daemon's lifecycle: startup -> main loop (tick) -> shutdown.

Modelled on uvicorn's Server: signal handlers only record the signal; the main
loop, ticking a few times a second, acts on it. The main loop owns the watcher
and the settle bookkeeping, renews the leases of the jobs the workers hold and
reports this daemon (a node) to the ledger; each worker thread owns a model
instance (stemd.workers).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import time
from pathlib import Path, PurePath
from types import FrameType
from typing import TYPE_CHECKING

from stemd.audio import kill_children
from stemd.config import Config, changed_keys, load_config
from stemd.engine import Engine, share_cpu, worker_devices
from stemd.errors import ConfigError, StemdError
from stemd.folders import FolderEvent, SharedFolders
from stemd.intake import Intake, stat_of
from stemd.ledger import (
    FileStat,
    JobState,
    Ledger,
    LedgerUnavailable,
    StateDirLock,
    connect,
    node_id,
)
from stemd.logs import event, setup_logging
from stemd.notifications.dispatch import Notifications
from stemd.notify import Notifier
from stemd.outbox import Outbox
from stemd.preflight import file_issues
from stemd.settle import Settler, ignore_reason
from stemd.watcher import Change, InboxWatcher
from stemd.workers import Workers

if TYPE_CHECKING:
    from stemd.http.server import HttpServer

log = logging.getLogger("stemd")

TICK_S = 0.1
STATUS_INTERVAL_S = 1.0
FOLDER_CHECK_INTERVAL_S = 1.0
WORKER_JOIN_AFTER_CANCEL_S = 120.0
# /ping fails when the main loop has not ticked for this long (a scan of a big
# inbox takes a second or two)
MAIN_LOOP_STALL_S = 10.0
# this daemon tells the ledger it is alive (and what its workers do) this often;
# one not heard from for NODE_GONE_S is gone: its unhashed inputs and
# undisposed sources are taken on by the others
NODE_REPORT_S = 2.0
NODE_GONE_S = 10.0
# an unreachable ledger is tried at least this often: at startup, and by a
# scan it cut short
LEDGER_RETRY_MAX_S = 10.0


class Service:
    def __init__(self, config: Config, config_path: Path | None) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = Notifier()
        self.signals: list[int] = []  # appended by handlers, read by the main loop
        self._handled_signals = 0
        self.state_lock: StateDirLock | None = None
        self.ledger: Ledger | None = None
        self.intake: Intake | None = None
        self.workers: Workers | None = None
        self.node = ""
        self.watcher: InboxWatcher | None = None
        self.settler: Settler | None = None
        self.folders: SharedFolders | None = None
        self.http: HttpServer | None = None
        self.notifications: Notifications | None = None  # messages to people (apprise, webhooks)
        self.started_at = time.time()
        self.model_load_seconds: float | None = None
        self._last_tick = time.monotonic()
        self._next_folder_check = 0.0
        self._next_rescan = 0.0
        self._next_status = 0.0
        self._next_ping = 0.0
        self._next_node_report = 0.0
        self._last_report: tuple[int, list[dict[str, object]]] | None = None
        self._next_renewal = 0.0
        self._unregistered: list[Path] = []  # settled while the ledger was away
        self._worker_hung = False
        self._stopping = False

    # -- signals --------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals.append(signum)

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    # -- lifecycle --------------------------------------------------------------

    def run(self) -> int:
        self.install_signal_handlers()
        try:
            self.startup()
            self.main_loop()
        finally:
            self.shutdown()
        failure = self.workers.failure() if self.workers is not None else None
        if failure is not None:
            raise StemdError(f"a worker failed: {failure}")
        return 0

    def startup(self) -> None:
        config = self.config
        # the files the config names, before a folder is made for a config that fails
        found = file_issues(config, self.config_path.name if self.config_path else "config")
        for warning in found.warnings:
            log.warning("%s", warning)
        found.raise_issues()
        self._prepare_folders(config)
        self.state_lock = StateDirLock(config.state_dir)
        self.node = node_id(config.state_dir)
        self.ledger = self._connect_ledger(config)
        self._report_node()  # before anything else: other nodes see us at once
        requeued, failed = self.ledger.recover(config.source.max_attempts)
        if requeued or failed:
            log.warning(
                "recovered from an interrupted run: %d job(s) requeued, %d failed", requeued, failed
            )
        # another host's work in progress in a shared outbox is not ours to clear
        live_others = {
            node.node
            for node in self.ledger.nodes()
            if node.node != self.node and node.age <= NODE_GONE_S
        }
        removed = Outbox(config.outbox, config.output, self.node).cleanup_temp(live_others)
        if removed:
            log.info("removed %d unfinished work folder(s) from the outbox", removed)
        self.notifier.status(f"loading model {config.model.name}")
        self._bind_http(config)  # a taken port fails now, not after a long model load
        self.folders = SharedFolders(config.inbox, config.outbox)
        devices = worker_devices(config.model)
        threads = share_cpu(devices)
        if threads is not None:
            log.info("%d workers on the CPU: %d threads each", len(devices), threads)
        engines: list[Engine] = []
        loading = time.monotonic()
        with self.notifier.keep_alive():  # a first download can take minutes
            for device in devices:  # a model instance per worker
                engines.append(Engine(config.model, device))
                if len(engines) == 1:  # the model is checked, and timed, once
                    self.model_load_seconds = time.monotonic() - loading
                    engines[0].check_stem(config.output.two_stems, "config", "output.two_stems")
                    engines[0].check_stems(config.output.stems, "config", "output.stems")
        self.intake = Intake(self.ledger, config, self.folders, engines[0].info, NODE_GONE_S)
        self.workers = Workers(self.ledger, config, self.intake, engines)
        self.notifications = Notifications(config, self.ledger, self._settling)
        self.notifications.start()  # before the workers: their first job's end is heard
        self.workers.start()
        self._start_watcher(config)
        if self.http is not None:
            self.http.start(self.ledger)  # the model is ready: serve
        self.notifier.ready()
        if self.notifier.watchdog_interval is not None:
            log.info("systemd watchdog: pinging every %.1fs", self.notifier.watchdog_interval)
        log.info(
            "stemd ready: inbox %s, outbox %s, %d worker(s), ledger %s (node %s)",
            config.inbox,
            config.outbox,
            len(self.workers.all),
            self.ledger.where,
            self.node,
        )

    def _connect_ledger(self, config: Config) -> Ledger:
        """The configured ledger; a database that cannot be reached yet (it is
        starting too, the network is not up) is waited for, until a signal."""
        delay = 0.5
        told = False
        with self.notifier.keep_alive():
            while True:
                try:
                    ledger = connect(
                        config.state_dir,
                        config.ledger.url,
                        config.ledger.password_file,
                        self.node,
                    )
                except LedgerUnavailable as err:
                    if not told:
                        log.error("%s; waiting for it", err)
                        self.notifier.status(f"waiting for the ledger: {err}")
                        told = True
                    deadline = time.monotonic() + delay
                    while time.monotonic() < deadline:
                        self._handle_signals()
                        if self._stopping:
                            raise
                        time.sleep(TICK_S)
                    delay = min(LEDGER_RETRY_MAX_S, delay * 2)
                    continue
                if told:
                    log.warning("the ledger at %s is reachable; starting", ledger.where)
                return ledger

    def _bind_http(self, config: Config) -> None:
        if config.http.listen is None:
            log.info("http: off (http.listen is null)")
            return
        from stemd.http.server import HttpServer  # FastAPI and uvicorn load only when used

        self.http = HttpServer(self, config)  # binds; serves from start()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def health(self) -> list[str]:
        """What is wrong, empty when healthy: the systemd watchdog's rule (the main
        loop ticks, the worker lives and shows progress) for /ping."""
        problems: list[str] = []
        now = time.monotonic()
        if self._stopping:
            problems.append("stemd is stopping")
        if now - self._last_tick > MAIN_LOOP_STALL_S:
            problems.append(f"the main loop has not run for {now - self._last_tick:.0f}s")
        workers = self.workers
        if not self.ledger_reachable:
            # said without its address: /ping answers anyone (the log names it)
            problems.append("the ledger is unreachable")
        if workers is None:
            problems.append("the workers are not running")
            return problems
        for worker in workers.dead():
            problems.append(f"worker {worker.worker_name} is not running")
        silent, worker = workers.silent_for(now)
        if silent > self.config.service.hang_timeout and self.ledger_reachable:
            problems.append(
                f"worker {worker.worker_name} has shown no progress for {silent:.0f}s "
                f"(service.hang_timeout {self.config.service.hang_timeout:.0f}s)"
            )
        return problems

    def _the_workers(self) -> str:
        """How messages name the workers: one is "the worker" (as ever)."""
        one = self.workers is None or len(self.workers.all) == 1
        return "worker is" if one else "workers are"

    @property
    def ledger_reachable(self) -> bool:
        return self.ledger is None or self.ledger.reachable

    @property
    def ledger_where(self) -> str:
        return self.ledger.where if self.ledger is not None else "(none)"

    def _prepare_folders(self, config: Config) -> None:
        for name, folder in (
            ("inbox", config.inbox),
            ("outbox", config.outbox),
            ("state_dir", config.state_dir),
        ):
            if not folder.is_dir():
                try:
                    folder.mkdir(parents=True)
                except OSError as err:
                    raise ConfigError.single(
                        "config",
                        name,
                        f"{folder} does not exist and cannot be created "
                        f"({err.strerror}); create it or fix the path",
                    ) from None
                log.info("created %s %s", name, folder)

    def _start_watcher(self, config: Config) -> None:
        self.watcher = InboxWatcher(config.inbox, config.watch)
        self.watcher.start()  # first: it may fall back from inotify to polling
        self.settler = Settler(config.watch.settle, require_close=self.watcher.require_close)
        try:
            self._scan(config.inbox)  # the startup scan: files dropped while we were stopped
        except LedgerUnavailable:
            return  # watching anyway; _scan set the next rescan to the ledger's next try
        self._next_rescan = time.monotonic() + config.watch.rescan_interval

    def main_loop(self) -> None:
        while not self._stopping:
            self.tick()
            time.sleep(TICK_S)

    def tick(self) -> None:
        self._last_tick = time.monotonic()
        # a reload can restart the watcher, whose scan asks the ledger: one that is
        # away must not end the daemon (the scan is retried on the ledger's pace)
        with contextlib.suppress(LedgerUnavailable):
            self._handle_signals()
        if self._stopping:
            return
        assert self.watcher is not None and self.settler is not None
        assert self.workers is not None
        dead = self.workers.dead()
        if dead:
            log.critical("worker %s died; stopping", ", ".join(w.worker_name for w in dead))
            self._stopping = True
            return
        if self.http is not None and not self.http.is_alive():
            log.critical("the HTTP server stopped; stopping (systemd restarts stemd)")
            self._stopping = True
            return
        now = time.monotonic()
        self._feed_watchdog(now)
        try:
            if now >= self._next_folder_check:
                self._next_folder_check = now + FOLDER_CHECK_INTERVAL_S
                self._check_folders()  # an inbox back is scanned: that asks the ledger
            self._keep_leases(now)
            if not self.watcher.stopped:  # stopped while the inbox is away
                self._take_in(now)
            if now >= self._next_node_report or self._report_changed():
                self._report_node()
        except LedgerUnavailable:
            pass  # said once by the ledger; the workers wait, the main loop goes on
        # The status line costs ledger queries: build it only for a listener.
        if self.notifier.enabled and now >= self._next_status:
            self._next_status = now + STATUS_INTERVAL_S
            self.notifier.status(self.status_line())

    def _take_in(self, now: float) -> None:
        """Events, the periodic rescan, and files that have settled."""
        assert self.settler is not None
        self._apply_changes()
        if now >= self._next_rescan:
            self._scan(self.config.inbox)
            self._next_rescan = now + self.config.watch.rescan_interval
        # files that settled while the ledger was away come first: the settler
        # has let go of them, and without this they would wait for the next
        # rescan (watch.rescan_interval)
        waiting = [*self._unregistered, *self.settler.poll()]
        for done, path in enumerate(waiting):
            try:
                self._register(path)
            except LedgerUnavailable:
                if len(waiting) - done != len(self._unregistered):
                    log.debug("%d settled file(s) wait for the ledger", len(waiting) - done)
                self._unregistered = waiting[done:]
                raise
        self._unregistered = []

    def _keep_leases(self, now: float) -> None:
        """Renew the leases of the jobs the workers hold, a few times a lease."""
        if now < self._next_renewal or self.workers is None:
            return
        lease = self.config.ledger.lease
        self._next_renewal = now + lease / 4
        self.workers.renew_leases(lease, self.config.service.hang_timeout)

    def _settling(self) -> int:
        if self.settler is None or self._stopping:
            return 0
        return len(self.settler) + len(self._unregistered)

    def _report_changed(self) -> bool:
        """Files settling, and which job each worker runs, live in this process:
        `stemd status` and the page hear of a change at once (progress within a
        job waits for the next report)."""
        if self._last_report is None:
            return False
        settling, workers = self._last_report
        if self._settling() != settling:
            return True
        running = [w["job"] for w in self.workers.report()] if self.workers is not None else []
        return running != [w.get("job") for w in workers]

    def _report_node(self) -> None:
        """This daemon is alive: its host, workers and files settling, for
        `stemd status` and the other nodes: every NODE_REPORT_S, and as soon as
        the settling count changes."""
        assert self.ledger is not None
        self._next_node_report = time.monotonic() + NODE_REPORT_S
        settling = self._settling()
        workers = self.workers.report() if self.workers is not None else []
        if not self.ledger.backend.shared and (settling, workers) == self._last_report:
            # no other daemon needs a heartbeat: an idle daemon writes nothing
            # (a NAS's disks may spin down)
            return
        self.ledger.report_node(
            socket.gethostname(), os.getpid(), self.started_at, settling, workers
        )
        self._last_report = (settling, workers)

    def _handle_signals(self) -> None:
        while not self._stopping and self._handled_signals < len(self.signals):
            signum = self.signals[self._handled_signals]
            self._handled_signals += 1
            if signum == signal.SIGHUP:
                self.reload()
            else:
                log.info("received %s; stopping", signal.Signals(signum).name)
                self._stopping = True

    def _stop_signal_pending(self) -> bool:
        """A SIGTERM/SIGINT arrived after the one that started the shutdown."""
        fresh = self.signals[self._handled_signals :]
        return any(signum != signal.SIGHUP for signum in fresh)

    # -- shared folders ---------------------------------------------------------

    def _check_folders(self) -> None:
        """Log a vanished or returning inbox/outbox; rewatch an inbox that is back.

        The worker waits by itself while one is missing (it asks the same
        SharedFolders), so jobs are neither failed nor lost meanwhile.
        """
        assert self.folders is not None and self.watcher is not None
        for change in self.folders.check():
            if change.event is FolderEvent.GONE:
                log.error(
                    "the %s %s is gone (an unmounted share, a pulled disk, deleted?): "
                    "pausing; queued files wait and stemd resumes by itself when it is back",
                    change.name,
                    change.path,
                )
            else:
                how = "is back" if change.event is FolderEvent.BACK else "was replaced (remounted?)"
                log.warning("the %s %s %s; resuming", change.name, change.path, how)
            if change.name == "inbox":
                self.watcher.stop()  # its watches belong to the old folder
            assert self.workers is not None
            self.workers.wake()
        if not self.watcher.stopped and not self.watcher.is_alive():
            # A deleted inbox ends its emitter: take in what it said last, so the
            # deletion is handled (and logged) as such, not as a watcher crash.
            self.watcher.flush()
            self._apply_changes()
        if not self.watcher.stopped and not self.watcher.is_alive():
            log.warning("the inbox watcher stopped unexpectedly; starting it again")
            self.watcher.stop()
        if self.watcher.stopped and "inbox" not in self.folders.missing():
            try:
                self._start_watcher(self.config)  # new watches, and a scan of what it holds
            except OSError as err:
                log.warning("cannot watch %s yet (%s); trying again", self.config.inbox, err)

    # -- watchdog -------------------------------------------------------------------

    def worker_hung(self, now: float) -> bool:
        """No sign of life from a worker for service.hang_timeout (logged once).
        Workers waiting for an unreachable ledger are waiting, not hung."""
        assert self.workers is not None
        silent, worker = self.workers.silent_for(now)
        hung = silent > self.config.service.hang_timeout and self.ledger_reachable
        if hung and not self._worker_hung:
            doing = worker.current.source if worker.current else "between jobs"
            log.critical(
                "worker %s has shown no progress for %.0fs (%s; service.hang_timeout is %.0fs): %s",
                worker.worker_name,
                silent,
                doing,
                self.config.service.hang_timeout,
                "watchdog pings stop so systemd restarts stemd"
                if self.notifier.watchdog_interval is not None
                else "restart stemd if it does not recover",
            )
        elif self._worker_hung and not hung:
            log.warning("the %s making progress again", self._the_workers())
        self._worker_hung = hung
        return hung

    def _feed_watchdog(self, now: float) -> None:
        """WATCHDOG=1 every half period, but only while the worker is alive and
        moving: pings come from the main loop, so a stuck main loop stops them too."""
        if self.worker_hung(now) or self.notifier.watchdog_interval is None:
            return
        if now >= self._next_ping:
            self._next_ping = now + self.notifier.watchdog_interval
            self.notifier.watchdog()

    # -- intake -------------------------------------------------------------------

    def _apply_changes(self) -> None:
        assert self.watcher is not None and self.settler is not None
        for change in self.watcher.drain():
            if change.kind is Change.CREATED:
                self.settler.created(change.path)
            elif change.kind is Change.WRITTEN:
                self.settler.written(change.path)
            elif change.kind is Change.CLOSED:
                self.settler.closed(change.path)
            elif change.kind is Change.GONE:
                self.settler.forget(change.path)
            elif change.kind is Change.DIR_ADDED and self.config.watch.recursive:
                self._scan(change.path)
            elif change.kind is Change.DIR_GONE:
                self.settler.forget_under(change.path)
            elif change.kind is Change.OVERFLOW:
                log.warning(
                    "inotify dropped events (its queue overflowed; see "
                    "fs.inotify.max_queued_events): rescanning %s now",
                    self.config.inbox,
                )
                self._scan(self.config.inbox)
            elif change.kind is Change.INBOX_DELETED:
                assert self.folders is not None
                log.error(
                    "the inbox %s was deleted: pausing; stemd watches it again when it is back",
                    change.path,
                )
                self.folders.forget("inbox")
                self.watcher.stop()
                return

    def _scan(self, folder: Path) -> None:
        assert self.watcher is not None and self.settler is not None
        assert self.ledger is not None
        for path in self.watcher.scan(folder):
            if path in self.settler:
                continue
            try:
                if self.ledger.known(path, stat_of(path)) is not None:
                    continue  # seen before, unchanged: no rehash
            except OSError:
                continue
            except LedgerUnavailable:
                self._next_rescan = time.monotonic() + LEDGER_RETRY_MAX_S  # try again soon
                raise
            self.settler.found(path)

    def _register(self, path: Path) -> None:
        """A settled path: refuse it with a reason, or record it for the worker."""
        assert self.ledger is not None and self.workers is not None
        relative = PurePath(os.path.relpath(path, self.config.inbox))
        if relative.parts and relative.parts[0] == "..":
            return
        reason = ignore_reason(relative, self.config.watch.extensions, self.config.watch.ignore)
        if reason is not None:
            log.debug("ignored %s: %s", relative, reason)
            return
        try:
            info = os.lstat(path)
        except OSError:
            return
        if not stat.S_ISREG(info.st_mode):
            kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a regular file"
            event(
                logging.WARNING,
                "ignored",
                f"{relative}: ignored, {kind}",
                source=relative.as_posix(),
            )
            return
        record = self.ledger.add_input(path, relative.as_posix(), FileStat.of(info))
        if record is not None:
            log.debug("settled: %s", relative)
            self.workers.wake()

    # -- reload ---------------------------------------------------------------

    def reload(self) -> None:
        self.notifier.reloading()
        self.notifier.status("reloading the configuration")
        log.info("reloading the configuration from %s", self.config_path)
        try:
            new = load_config(self.config_path)
        except ConfigError as err:
            for issue in err.issues:
                log.error("reload rejected: %s", issue)
            log.error("keeping the running configuration")
            self.notifier.ready()
            return
        old = self.config
        if new.state_dir != old.state_dir:
            log.warning("state_dir changes need a restart; keeping %s", old.state_dir)
            new = new.model_copy(update={"state_dir": old.state_dir})
        if new.model.cache != old.model.cache:
            # HF_HOME is read once, when huggingface_hub is imported
            log.warning("model.cache changes need a restart; keeping %s", old.model.cache)
            new = new.model_copy(
                update={"model": new.model.model_copy(update={"cache": old.model.cache})}
            )
        if new.logging != old.logging:
            setup_logging(new.logging.target, new.logging.level)
        if new.http != old.http:
            log.warning("http changes need a restart; keeping the running server's settings")
            new = new.model_copy(update={"http": old.http})
        if new.ledger != old.ledger:
            log.warning("ledger changes need a restart; keeping %s", self.ledger_where)
            new = new.model_copy(update={"ledger": old.ledger})
        if (new.model.device, new.model.workers) != (old.model.device, old.model.workers):
            log.warning("model.device and model.workers changes need a restart")
            kept = {"device": old.model.device, "workers": old.model.workers}
            new = new.model_copy(update={"model": new.model.model_copy(update=kept)})
        changes = changed_keys(old, new)
        log.info("changed: %s", "; ".join(changes) if changes else "nothing (no key differs)")
        self.config = new
        if new.inbox != old.inbox or new.outbox != old.outbox:
            self.folders = SharedFolders(new.inbox, new.outbox)
            assert self.intake is not None
            self.intake.folders = self.folders
        if new.inbox != old.inbox or new.watch != old.watch:
            # Queued jobs live in the ledger and are kept; files still settling are
            # found again by the new watcher's startup scan.
            assert self.watcher is not None
            log.info("inbox or watch settings changed; restarting the watcher")
            self.watcher.stop()
            self._start_watcher(new)
        assert self.workers is not None
        self.workers.request_reload(new)
        if self.notifications is not None:
            self.notifications.reload(new)
        running = [worker.current.source for worker in self.workers.busy() if worker.current]
        log.info(
            "configuration reloaded%s",
            f"; {', '.join(running)} {'finishes' if len(running) == 1 else 'finish'} "
            "under the old one"
            if running
            else "",
        )
        self._next_status = 0.0  # say what we do now, not "reloading"
        self.notifier.ready()

    # -- status -----------------------------------------------------------------

    def status_line(self) -> str:
        assert self.ledger is not None and self.workers is not None
        try:
            counts = self.ledger.counts()
        except LedgerUnavailable:
            return f"waiting for the ledger at {self.ledger.where} (unreachable)"
        queued = counts[JobState.QUEUED.value]
        busy = [w.current for w in self.workers.busy() if w.current is not None]
        if busy:
            doing = ", ".join(f"{PurePath(c.source).name} {c.progress:.0%}" for c in busy)
            return f"separating {doing}, {queued} queued"
        return f"idle, {counts[JobState.DONE.value]} done, {counts[JobState.FAILED.value]} failed"

    # -- shutdown -----------------------------------------------------------------

    def shutdown(self) -> None:
        self._stopping = True  # /predict waiters and event streams end, /ping says 503
        self.notifier.stopping()
        if self.watcher is not None:
            self.watcher.stop()
        if self.http is not None:
            self.http.stop()  # no new uploads while the worker finishes
        workers = self.workers
        if workers is not None and workers.alive():
            self._stop_workers(workers)
        killed = kill_children()  # none unless the worker is stuck: it kills its own
        if killed:
            log.warning("killed %d ffmpeg process(es) still running", killed)
        if self.notifications is not None:
            self.notifications.stop()  # the last jobs' messages, briefly
        if self.ledger is not None:
            # a stopped daemon is no node, settling nothing (if the ledger is
            # unreachable, the others see it gone once it is not heard from)
            with contextlib.suppress(LedgerUnavailable):
                self.ledger.leave()
            self.ledger.close()
        if self.state_lock is not None:
            self.state_lock.release()
        log.info("stemd stopped")

    def _stop_workers(self, workers: Workers) -> None:
        """Let the running jobs finish within service.shutdown_grace (the leases
        kept meanwhile), then cancel them at the next chunk (they are requeued)."""
        workers.request_stop()
        grace = self.config.service.shutdown_grace
        deadline = time.monotonic() + grace
        running = [w.current.source for w in workers.busy() if w.current is not None]
        if running:
            log.info("waiting up to %.0fs for %s to finish", grace, ", ".join(running))
            self.notifier.status(f"stopping: finishing {', '.join(running)}")
        while workers.alive() and time.monotonic() < deadline:
            workers.alive()[0].join(TICK_S)
            now = time.monotonic()
            self._feed_watchdog(now)
            with contextlib.suppress(LedgerUnavailable):
                self._keep_leases(now)
            if self._stop_signal_pending():
                log.info(
                    "second signal: cancelling the running %s now",
                    "job" if len(workers.all) == 1 else "jobs",
                )
                break
        if workers.alive():
            workers.request_cancel()
            for worker in workers.busy():
                if worker.current is not None:
                    log.info(
                        "%s: cancelling at the next chunk; it will be requeued",
                        worker.current.source,
                    )
            deadline = time.monotonic() + WORKER_JOIN_AFTER_CANCEL_S
            while workers.alive() and time.monotonic() < deadline:
                workers.alive()[0].join(TICK_S)
                self._feed_watchdog(time.monotonic())  # the join outlasts WatchdogSec
            if workers.alive():
                log.error("a worker did not stop; exiting anyway")
