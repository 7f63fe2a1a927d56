"""The daemon's lifecycle: startup -> main loop (tick) -> shutdown.

Modelled on uvicorn's Server: signal handlers only record the signal; the main
loop, ticking a few times a second, acts on it and feeds intake from the
watcher (`InboxFeed`). The daemon's signs of life (systemd's watchdog, the
leases of running jobs, this node's report to the ledger) run on threads of
their own (`Liveness`); each worker thread owns a model instance
(stemd.workers). A worker, the HTTP server or the liveness threads dying stops
the daemon with a failure exit (systemd's Restart=on-failure starts it again).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path, PurePath
from types import FrameType
from typing import TYPE_CHECKING

from stemd.audio import kill_children
from stemd.callbacks.delivery import Callbacks
from stemd.callbacks.signing import ensure_secret, secret_path
from stemd.config import Config, changed_keys, load_config
from stemd.errors import ConfigError, StemdError
from stemd.folders import SharedFolders
from stemd.intake import Intake
from stemd.ledger import (
    JobState,
    Ledger,
    LedgerUnavailable,
    StateDirLock,
    connect,
    node_id,
)
from stemd.logs import setup_logging
from stemd.notifications.dispatch import Notifications
from stemd.notify import Notifier
from stemd.outbox import Outbox
from stemd.preflight import file_issues
from stemd.separation.engine import (
    EXPORTS,
    Engine,
    cpu_threads,
    resolve_device,
    worker_devices,
)
from stemd.service.inbox import InboxFeed
from stemd.service.liveness import MAIN_LOOP_STALL_S, NODE_GONE_S, Liveness
from stemd.workers import Workers

if TYPE_CHECKING:
    from stemd.http.server import HttpServer

log = logging.getLogger("stemd")

TICK_S = 0.1
STATUS_INTERVAL_S = 1.0
WORKER_JOIN_AFTER_CANCEL_S = 120.0
# an unreachable ledger is tried at least this often at startup
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
        self.inbox: InboxFeed | None = None  # intake from the watcher (the main loop's)
        self.liveness: Liveness | None = None  # watchdog, leases, node report (a thread)
        self.folders: SharedFolders | None = None
        self.http: HttpServer | None = None
        self.notifications: Notifications | None = None  # messages to people (apprise, webhooks)
        self.callbacks: Callbacks | None = None  # each input's callback_url, signed
        self.started_at = time.time()
        self.model_load_seconds: float | None = None
        self._fatal: str | None = None  # why the main loop stopped on its own
        self._next_status = 0.0
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
        if self._fatal is not None:  # a failure exit: systemd's Restart=on-failure acts
            raise StemdError(self._fatal)
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
        secret = self._callback_secret(config)
        self.node = node_id(config.state_dir)
        self.ledger = ledger = self._connect_ledger(
            lambda: connect(
                config.state_dir, config.ledger.url, config.ledger.password_file, self.node
            )
        )
        # the signs of life have a connection of their own: no other thread's
        # ledger traffic comes before a lease renewal
        self.liveness = Liveness(
            config,
            self.notifier,
            self._connect_ledger(ledger.another_connection),
            lambda: self.ledger_reachable,
            self._settling,
            self.started_at,
        )
        self.liveness.report_node()  # before anything else: other nodes see us at once
        self.liveness.start()  # reported while the model loads: a restart is not "gone"
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
        if any(resolve_device(device).type == "cpu" for device in devices):
            threads = cpu_threads(config.model)
            log.info("CPU threads: %d per forward pass (%s)", threads.intra_op, threads.why)
        engines: list[Engine] = []
        loading = time.monotonic()
        with self.notifier.keep_alive():  # a first download can take minutes
            for device in devices:  # a model instance per worker
                engines.append(Engine(config.model, device, config.state_dir / EXPORTS))
                if len(engines) == 1:  # the model is checked, and timed, once
                    self.model_load_seconds = time.monotonic() - loading
                    engines[0].check_stem(config.output.two_stems, "config", "output.two_stems")
                    engines[0].check_stems(config.output.stems, "config", "output.stems")
        self.intake = Intake(self.ledger, config, self.folders, engines[0].info, NODE_GONE_S)
        self.workers = Workers(self.ledger, config, self.intake, engines)
        self.notifications = Notifications(config, self.ledger, self._settling)
        self.notifications.start()  # before the workers: their first job's end is heard
        self.callbacks = self._start_callbacks(config, secret)
        self.workers.start()
        self.liveness.attach(self.workers)  # before the startup scan: it may be long
        self.inbox = InboxFeed(
            config, self.ledger, self.folders, self.workers.wake, self.liveness.beat
        )
        self.inbox.start()  # the startup scan: files dropped while we were stopped
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

    def _callback_secret(self, config: Config) -> bytes:
        """The key callbacks are signed with, made now if there is none (before
        the model loads: a secret that cannot be made fails the start at once)."""
        path = secret_path(config.http.callback_secret_file, config.state_dir)
        source = self.config_path.name if self.config_path else "config"
        secret, made = ensure_secret(path, source)
        if made:
            log.info("callbacks: made a signing secret in %s (mode 0600)", path)
        return secret

    def _start_callbacks(self, config: Config, secret: bytes) -> Callbacks:
        """Callbacks' owner, on a ledger connection of its own (its polls never
        queue before a worker's writes)."""
        assert self.ledger is not None
        callbacks = Callbacks(
            self._connect_ledger(self.ledger.another_connection),
            config.outbox,
            secret,
            node_gone=NODE_GONE_S,
        )
        callbacks.start()
        return callbacks

    def _connect_ledger(self, opener: Callable[[], Ledger]) -> Ledger:
        """The ledger `opener` connects to; a database that cannot be reached yet
        (it is starting too, the network is not up) is waited for, until a signal."""
        delay = 0.5
        told = False
        with self.notifier.keep_alive():
            while True:
                try:
                    ledger = opener()
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
        loop moves, the worker lives and shows progress) for /ping."""
        problems: list[str] = []
        now = time.monotonic()
        if self._stopping:
            problems.append("stemd is stopping")
        silence = self.liveness.main_loop_silence(now) if self.liveness is not None else 0.0
        if silence > MAIN_LOOP_STALL_S:
            problems.append(f"the main loop has not run for {silence:.0f}s")
        if self.liveness is not None and not self.liveness.is_alive() and not self._stopping:
            problems.append("the liveness thread is not running")
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

    def main_loop(self) -> None:
        while not self._stopping:
            self.tick()
            time.sleep(TICK_S)

    def tick(self) -> None:
        self._beat()
        # a reload can restart the watcher, whose scan asks the ledger: one that is
        # away must not end the daemon (the scan is retried on the ledger's pace)
        with contextlib.suppress(LedgerUnavailable):
            self._handle_signals()
        if self._stopping:
            return
        assert self.inbox is not None and self.workers is not None
        assert self.liveness is not None
        dead = self.workers.dead()
        if dead:
            self._fatal = f"worker {', '.join(w.worker_name for w in dead)} died"
            log.critical("%s; stopping", self._fatal)
            self._stopping = True
            return
        if self.http is not None and not self.http.is_alive():
            self._fatal = "the HTTP server stopped"
            log.critical("%s; stopping (systemd restarts stemd)", self._fatal)
            self._stopping = True
            return
        if not self.liveness.is_alive():
            self._fatal = f"the liveness thread died ({self.liveness.failure})"
            log.critical("%s; stopping (systemd restarts stemd)", self._fatal)
            self._stopping = True
            return
        now = time.monotonic()
        # an unreachable ledger is said once by the ledger; the workers wait, the
        # main loop goes on
        with contextlib.suppress(LedgerUnavailable):
            self.inbox.tick(now)
        # The status line costs ledger queries: build it only for a listener.
        if self.notifier.enabled and now >= self._next_status:
            self._next_status = now + STATUS_INTERVAL_S
            self.notifier.status(self.status_line())

    def _beat(self) -> None:
        """The main thread moves (the watchdog's rule)."""
        if self.liveness is not None:
            self.liveness.beat()

    def _settling(self) -> int:
        """Files seen that wait to settle (none once stemd stops)."""
        if self.inbox is None or self._stopping:
            return 0
        return self.inbox.settling()

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
        asked = changed_keys(old, new)  # what the file now says, before any is kept back

        def needs_restart(what: str, *prefixes: str) -> None:
            keys = [change for change in asked if change.startswith(prefixes)]
            log.warning(
                "%s: a change here needs a restart, not applied until then (%s); keeping %s",
                " and ".join(prefix.rstrip(".") for prefix in prefixes),
                "; ".join(keys) or "a key not shown",
                what,
            )

        if new.state_dir != old.state_dir:
            needs_restart(str(old.state_dir), "state_dir")
            new = new.model_copy(update={"state_dir": old.state_dir})
        if new.model.cache != old.model.cache:
            # HF_HOME is read once, when huggingface_hub is imported
            needs_restart(str(old.model.cache), "model.cache")
            new = new.model_copy(
                update={"model": new.model.model_copy(update={"cache": old.model.cache})}
            )
        if new.logging != old.logging:
            setup_logging(new.logging.target, new.logging.level)
        if new.http != old.http:
            needs_restart("the running server's settings", "http.")
            new = new.model_copy(update={"http": old.http})
        if new.ledger != old.ledger:
            needs_restart(self.ledger_where, "ledger.")
            new = new.model_copy(update={"ledger": old.ledger})
        if (new.model.device, new.model.workers) != (old.model.device, old.model.workers):
            needs_restart("the running workers", "model.device", "model.workers")
            kept = {"device": old.model.device, "workers": old.model.workers}
            new = new.model_copy(update={"model": new.model.model_copy(update=kept)})
        changes = changed_keys(old, new)
        waiting = [change for change in asked if change not in changes]
        log.info(
            "changed: %s%s",
            "; ".join(changes) if changes else "nothing" if waiting else "nothing (no key differs)",
            f"; after a restart: {'; '.join(waiting)}" if waiting else "",
        )
        self.config = new
        if new.inbox != old.inbox or new.outbox != old.outbox:
            self.folders = SharedFolders(new.inbox, new.outbox)
            assert self.intake is not None
            self.intake.folders = self.folders
        assert self.inbox is not None and self.folders is not None
        self.inbox.reconfigure(new, self.folders)
        assert self.liveness is not None and self.workers is not None
        self.liveness.configure(new)
        self.workers.request_reload(new)
        if self.notifications is not None:
            self.notifications.reload(new)
        if self.callbacks is not None:
            self.callbacks.reload(new.outbox)
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
        if self.inbox is not None:
            self.inbox.stop()
        if self.http is not None:
            self.http.stop()  # no new uploads while the worker finishes
        workers = self.workers
        if workers is not None and workers.alive():
            self._stop_workers(workers)
        if self.liveness is not None:
            self.liveness.stop()  # the workers are gone: no lease left to renew
        killed = kill_children()  # none unless the worker is stuck: it kills its own
        if killed:
            log.warning("killed %d ffmpeg process(es) still running", killed)
        if self.notifications is not None:
            self.notifications.stop()  # the last jobs' messages, briefly
        if self.callbacks is not None:
            self.callbacks.stop()  # the last jobs' callbacks, briefly; the rest released
            self.callbacks.ledger.close()
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
        kept meanwhile, and the watchdog fed while they move: the liveness thread
        runs until they are joined), then cancel them at the next chunk (they are
        requeued)."""
        workers.request_stop()
        grace = self.config.service.shutdown_grace
        deadline = time.monotonic() + grace
        running = [w.current.source for w in workers.busy() if w.current is not None]
        if running:
            log.info("waiting up to %.0fs for %s to finish", grace, ", ".join(running))
            self.notifier.status(f"stopping: finishing {', '.join(running)}")
        while workers.alive() and time.monotonic() < deadline:
            workers.alive()[0].join(TICK_S)
            self._beat()
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
                self._beat()  # the join outlasts WatchdogSec: the pings go on
            if workers.alive():
                log.error("a worker did not stop; exiting anyway")
