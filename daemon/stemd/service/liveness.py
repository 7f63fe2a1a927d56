"""The daemon's signs of life, on threads of their own: `stemd-watchdog` pings
systemd's watchdog and touches nothing else; `stemd-liveness` renews the leases
of the jobs the workers hold and reports this node to the ledger, over a
connection of its own.

They ran on the main loop once, after its other work: a rescan that asked the
ledger about tens of thousands of kept files could outlast a lease (another host
took the running job over) and WatchdogSec. Now no other work, and no other
thread's ledger traffic, comes first. The main loop says it still moves (`beat`,
also from inside a long scan); one that stops moving stops the pings, as a stuck
main loop did before. A database that stops answering holds the renewals (until
the connection's own timeouts end the wait), never the pings.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from stemd.config import Config
from stemd.ledger import Ledger, LedgerUnavailable
from stemd.notify import Notifier
from stemd.workers import Workers

log = logging.getLogger("stemd")

LIVENESS_TICK_S = 0.1
# the watchdog stops (and /ping fails) when the main loop has not moved for this
# long: a scan moves, folder by folder; a main loop stuck in one call does not
MAIN_LOOP_STALL_S = 10.0
# this daemon tells the ledger it is alive (and what its workers do) this often;
# one not heard from for NODE_GONE_S is gone: its unhashed inputs and
# undisposed sources are taken on by the others
NODE_REPORT_S = 2.0
NODE_GONE_S = 10.0
STOP_JOIN_S = 10.0  # a ledger call in flight ends by the connection's own timeouts


class Liveness:
    """Owns the `stemd-watchdog` and `stemd-liveness` threads: `start` them as
    soon as the ledger is reached (the node is reported while the model loads),
    `attach` the workers once they run, `stop` (joined) once they have stopped.
    `ledger` is this object's own connection (it closes it); `reachable` says
    whether the workers' ledger is reachable (workers waiting for it are not hung)."""

    def __init__(
        self,
        config: Config,
        notifier: Notifier,
        ledger: Ledger,
        reachable: Callable[[], bool],
        settling: Callable[[], int],
        started_at: float,
    ) -> None:
        self.config = config  # replaced by `configure` on a reload
        self.notifier = notifier
        self.ledger = ledger
        self._reachable = reachable
        self._settling = settling  # files the watcher has seen that wait to settle
        self.started_at = started_at
        self.workers: Workers | None = None
        self._main_beat = time.monotonic()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_ping = 0.0
        self._next_renewal = 0.0
        self._next_report = 0.0
        self._last_report: tuple[int, list[dict[str, Any]]] | None = None
        self._worker_hung = False
        self.failure: BaseException | None = None

    # -- from the main thread ---------------------------------------------------

    def beat(self) -> None:
        """The main loop (or a scan it runs) moves."""
        self._main_beat = time.monotonic()

    def configure(self, config: Config) -> None:
        self.config = config

    def start(self) -> None:
        for name, step in (("stemd-watchdog", self._ping), ("stemd-liveness", self._renew)):
            thread = threading.Thread(target=self._run, args=(step,), name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def attach(self, workers: Workers) -> None:
        """The workers run: their leases are renewed, their hang stops the pings."""
        self.workers = workers

    def is_alive(self) -> bool:
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    def stop(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + STOP_JOIN_S
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            # a daemon thread: it ends with the process; its connection is left open
            log.warning("the liveness thread is still in a ledger call; not waiting for it")
            return
        self.ledger.close()

    # -- the threads ---------------------------------------------------------------

    def _run(self, step: Callable[[float], None]) -> None:
        try:
            while not self._stop.wait(LIVENESS_TICK_S):
                step(time.monotonic())
        except BaseException as err:  # the main loop sees the thread gone and stops
            self.failure = err
            name = threading.current_thread().name
            log.critical("%s stopped on an unexpected error: %s", name, err, exc_info=True)

    def _ping(self, now: float) -> None:
        self._feed_watchdog(now)

    def _renew(self, now: float) -> None:
        try:
            self._keep_leases(now)
            if now >= self._next_report or self._report_changed():
                self.report_node()
        except LedgerUnavailable:
            pass  # said once by the ledger; tried again at the next tick

    # -- systemd's watchdog -------------------------------------------------------

    def main_loop_silence(self, now: float) -> float:
        return now - self._main_beat

    def worker_hung(self, now: float) -> bool:
        """No sign of life from a worker for service.hang_timeout (logged once).
        Workers waiting for an unreachable ledger are waiting, not hung."""
        if self.workers is None:
            return False
        silent, worker = self.workers.silent_for(now)
        hang_timeout = self.config.service.hang_timeout
        hung = silent > hang_timeout and self._reachable()
        if hung and not self._worker_hung:
            doing = worker.current.source if worker.current else "between jobs"
            log.critical(
                "worker %s has shown no progress for %.0fs (%s; service.hang_timeout is %.0fs): %s",
                worker.worker_name,
                silent,
                doing,
                hang_timeout,
                "watchdog pings stop so systemd restarts stemd"
                if self.notifier.watchdog_interval is not None
                else "restart stemd if it does not recover",
            )
        elif self._worker_hung and not hung:
            one = len(self.workers.all) == 1
            log.warning("the %s making progress again", "worker is" if one else "workers are")
        self._worker_hung = hung
        return hung

    def _feed_watchdog(self, now: float) -> None:
        """WATCHDOG=1 every half period while the workers and the main loop move."""
        if self.worker_hung(now) or self.notifier.watchdog_interval is None:
            return
        if self.main_loop_silence(now) > MAIN_LOOP_STALL_S:
            return
        if now >= self._next_ping:
            self._next_ping = now + self.notifier.watchdog_interval
            self.notifier.watchdog()

    # -- leases and the node report -------------------------------------------------

    def _keep_leases(self, now: float) -> None:
        """Renew the leases of the jobs the workers hold, a few times a lease."""
        if now < self._next_renewal or self.workers is None:
            return
        lease = self.config.ledger.lease
        self._next_renewal = now + lease / 4
        self.workers.renew_leases(self.ledger, lease, self.config.service.hang_timeout)

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

    def report_node(self) -> None:
        """This daemon is alive: its host, workers and files settling, for
        `stemd status` and the other nodes: every NODE_REPORT_S, and as soon as
        what it reports changes. Raises LedgerUnavailable."""
        self._next_report = time.monotonic() + NODE_REPORT_S
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
