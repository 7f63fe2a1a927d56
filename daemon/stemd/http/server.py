"""The HTTP server: uvicorn on a thread the Service owns.

The Service makes the server before it loads the model: the socket is bound
then, so a taken port is a clear error at once, naming http.listen. It starts
serving once the model is ready (until then connections are refused), and stops
before the worker. uvicorn installs no signal handlers off the main thread: the
Service keeps its own.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

import uvicorn

from stemd.config import Config, listen_address
from stemd.errors import ConfigError, StemdError
from stemd.http.app import create_app
from stemd.http.auth import read_token
from stemd.http.context import Context
from stemd.http.events import EventHub
from stemd.http.metrics import Metrics
from stemd.http.origins import allowed_hosts
from stemd.http.spool import Spool
from stemd.http.view import DaemonView

if TYPE_CHECKING:
    from stemd.ledger import Ledger

log = logging.getLogger("stemd")

START_TIMEOUT_S = 15.0
# Open requests get this long to finish on stop; /predict waiters and event
# streams end at once (they see the daemon stopping).
GRACEFUL_S = 5
STOP_JOIN_S = GRACEFUL_S + 5.0


def bind(listen: str) -> socket.socket:
    host, port = listen_address(listen)
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise ConfigError.single("config", "http.listen", f"cannot use {listen}: {err}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        sock.close()
        hint = (
            "another program (or another stemd) listens there: pick another port"
            if err.errno == errno.EADDRINUSE
            else "check the address"
        )
        raise ConfigError.single(
            "config", "http.listen", f"cannot listen on {listen}: {err.strerror}; {hint}"
        ) from None
    sock.set_inheritable(False)
    return sock


class HttpServer:
    def __init__(self, daemon: DaemonView, config: Config) -> None:
        assert config.http.listen is not None
        token_file = config.http.token_file
        token = read_token(token_file) if token_file is not None else None
        self.spool = Spool(config.state_dir)
        self.hub = EventHub()

        def counts() -> dict[str, int]:
            ledger: Ledger | None = daemon.ledger
            return ledger.counts() if ledger is not None else {}

        def model() -> tuple[float | None, float | None]:
            workers = daemon.workers
            return daemon.model_load_seconds, workers.warm_up_seconds() if workers else None

        self.metrics = Metrics(counts, model)
        self.hub.listen(self.metrics.on_event)
        listen_host, _port = listen_address(config.http.listen)
        hosts = allowed_hosts(config.http.allowed_hosts, listen_host)
        self.app = create_app(Context(daemon, self.spool, self.hub, self.metrics, token, hosts))
        self.token_required = token is not None
        self.socket = bind(config.http.listen)
        host, port = self.socket.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                log_config=None,  # stemd's logging; uvicorn's errors are forwarded to it
                access_log=False,
                lifespan="off",
                loop="asyncio",
                http="h11",
                ws="none",
                timeout_graceful_shutdown=GRACEFUL_S,
                server_header=False,
            )
        )
        self._thread = threading.Thread(target=self._serve, name="stemd-http", daemon=True)
        self.failure: BaseException | None = None

    def _serve(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        except BaseException as exc:  # the service sees it in is_alive()/failure
            self.failure = exc
            log.error("the HTTP server stopped: %s", exc, exc_info=True)

    def start(self, ledger: Ledger) -> None:
        removed = self.spool.tidy(ledger.uploads_in_use())
        if removed:
            log.info("removed %d upload(s) in %s no job needs", removed, self.spool.root)
        self.hub.attach()
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise StemdError(f"the HTTP server did not start on {self.url}: {self.failure}")
            self._thread.join(0.02)
        log.info(
            "http: listening on %s (%s)",
            self.url,
            "token required" if self.token_required else "no token: loopback only",
        )

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """End event streams and waiters, let open requests finish (a few
        seconds), then close the socket."""
        self.hub.close()
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(STOP_JOIN_S)
            if self._thread.is_alive():
                log.error("the HTTP server did not stop within %.0fs; leaving it", STOP_JOIN_S)
        self.hub.detach()
        self.socket.close()
