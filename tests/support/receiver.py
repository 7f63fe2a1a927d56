"""HTTP servers that play notification targets: one that records every request
(Apprise json:// and form://, webhooks), one that accepts connections and never
answers (a hung service), and a port that refuses them."""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from support.waiting import wait_until


@dataclass(frozen=True)
class Received:
    path: str
    body: dict[str, Any]  # JSON, or a form's fields
    headers: dict[str, str] = field(default_factory=dict, compare=False)
    raw: bytes = b""  # the body as sent (what a signature covers)


class Receiver:
    """Records each POST; answers 200 (or, first, the `failures` statuses in turn:
    a receiver that is down for a while; failed POSTs are recorded too)."""

    def __init__(self, port: int = 0, failures: tuple[int, ...] = ()) -> None:
        self.received: list[Received] = []
        self._failures = list(failures)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length)
                raw = data.decode()
                kind = self.headers.get("Content-Type", "")
                if kind.startswith("application/json"):
                    body = json.loads(raw)
                else:
                    body = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
                with receiver._lock:
                    receiver.received.append(
                        Received(self.path, body, dict(self.headers.items()), data)
                    )
                    status = receiver._failures.pop(0) if receiver._failures else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, path: str, count: int, timeout: float) -> list[Received]:
        def enough() -> list[Received] | None:
            found = self.at(path)
            return found if len(found) >= count else None

        return wait_until(enough, timeout, f"{count} message(s) at {path}")


class Hanging:
    """Accepts connections and reads nothing, answers nothing, until closed."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(conn)

    def __enter__(self) -> Hanging:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for conn in self.connections:
            conn.close()
        self.listener.close()


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])
