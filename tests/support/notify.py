"""A real datagram socket bound as $NOTIFY_SOCKET: what systemd would hear from stemd."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MAX_UNIX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


@dataclass(frozen=True)
class Message:
    at: float  # time.monotonic() when it arrived
    fields: dict[str, str]  # READY=1 -> {"READY": "1"}


class NotifySocket:
    """Collects every sd_notify datagram on a thread of its own."""

    def __init__(self, path: Path) -> None:
        if len(str(path)) > MAX_UNIX_PATH:
            raise ValueError(f"{path} is too long for a unix socket")
        self.path = path
        self.messages: list[Message] = []
        self._changed = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-listener", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._changed:
                self.messages.append(Message(time.monotonic(), fields))
                self._changed.notify_all()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def snapshot(self) -> list[Message]:
        with self._changed:
            return list(self.messages)

    def wait_for(
        self, check: Callable[[Message], bool], timeout: float, what: str, after: float = 0.0
    ) -> Message:
        """The first message (arrived at or after `after`) that passes `check`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.messages:
                    if message.at >= after and check(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [m.fields for m in self.messages[-10:]]
                    raise AssertionError(f"no {what} within {timeout:.0f}s; last: {seen}")
                self._changed.wait(left)

    def times_of(self, field: str, since: float = 0.0, until: float | None = None) -> list[float]:
        return [
            m.at
            for m in self.snapshot()
            if field in m.fields and m.at >= since and (until is None or m.at <= until)
        ]
