"""sd_notify: tell systemd when stemd is ready, what it does, and that it is alive.

A no-op when $NOTIFY_SOCKET is unset (not run by systemd with Type=notify).
"""

from __future__ import annotations

import os
import time


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._last_status = ""

    def _send(self, text: str) -> None:
        if not self.enabled:
            return
        from systemd import daemon

        daemon.notify(text)

    def ready(self) -> None:
        self._send("READY=1")

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self._send(f"STATUS={text}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")
