"""sd_notify: tell systemd when stemd is ready, what it does, and that it is alive.

Everything is a no-op when $NOTIFY_SOCKET is unset (not run by systemd with
Type=notify). The watchdog is on when systemd set $WATCHDOG_USEC (WatchdogSec=)
for this very process ($WATCHDOG_PID, when set, must be our pid): then the
service pings every half period, and only while it is healthy.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Mapping

# While a slow step runs (loading or downloading a model), ask for this much more
# start-up time, again every third of it, so TimeoutStartSec only fires on a hang.
EXTEND_BY_S = 30.0


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Half of $WATCHDOG_USEC in seconds, or None when no watchdog is asked of us."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None  # meant for another process (a parent that exec'd us)
    return usec / 2 / 1_000_000


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.enabled = bool(environ.get("NOTIFY_SOCKET"))
        self.watchdog_interval = watchdog_interval(environ, os.getpid()) if self.enabled else None
        self._last_status = ""
        self._lock = threading.Lock()  # the keep-alive thread sends too

    def _send(self, text: str) -> None:
        if not self.enabled:
            return
        from systemd import daemon

        with self._lock:
            daemon.notify(text)

    def ready(self) -> None:
        self._send("READY=1")

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self._send(f"STATUS={text}")

    def reloading(self) -> None:
        # systemd >= 253 matches RELOADING=1 to the reload it started by this clock.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    @contextlib.contextmanager
    def keep_alive(self) -> Iterator[None]:
        """Around a long blocking step before the main loop runs: extend the
        start-up timeout and keep the watchdog fed from a helper thread."""
        if not self.enabled:
            yield
            return
        done = threading.Event()
        every = EXTEND_BY_S / 3
        if self.watchdog_interval is not None:
            every = min(every, self.watchdog_interval)

        def pulse() -> None:
            while True:
                message = f"EXTEND_TIMEOUT_USEC={int(EXTEND_BY_S * 1_000_000)}"
                if self.watchdog_interval is not None:
                    message += "\nWATCHDOG=1"
                self._send(message)
                if done.wait(every):
                    return

        thread = threading.Thread(target=pulse, name="stemd-keep-alive", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(5)
