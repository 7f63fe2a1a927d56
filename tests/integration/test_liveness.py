"""The daemon's signs of life on their own threads (stemd.service.liveness): a
real PostgreSQL ledger that the test freezes, a real datagram socket as
$NOTIFY_SOCKET, the threads as the daemon runs them."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from stemd.config import load_config
from stemd.ledger import connect
from stemd.notify import Notifier
from stemd.service.liveness import NODE_REPORT_S, Liveness
from support.notify import NotifySocket
from support.postgres import PostgresServer
from support.waiting import wait_until

WATCHDOG_USEC = 1_000_000  # pings due every 0.5 s


def test_pings_go_on_while_the_database_hangs_in_a_node_report(
    tmp_path: Path, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres.new_database()
    own = connect(tmp_path, url, None, "host-a")
    with NotifySocket(tmp_path / "notify.sock") as systemd:
        # sd_notify reads the socket's address from the environment, as under systemd
        monkeypatch.setenv("NOTIFY_SOCKET", str(systemd.path))
        monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
        notifier = Notifier()
        assert notifier.watchdog_interval is not None
        liveness = Liveness(load_config(None), notifier, own, lambda: True, lambda: 0, 0.0)
        liveness.start()
        try:
            wait_until(lambda: systemd.times_of("WATCHDOG"), 10, "the first ping")
            postgres.freeze()  # the next node report (every 2 s) hangs
            frozen = time.monotonic()
            try:
                while time.monotonic() < frozen + 2 * NODE_REPORT_S + 1:
                    liveness.beat()  # the main loop moves
                    time.sleep(0.1)
            finally:
                postgres.thaw()
            thawed = time.monotonic()
            pings = systemd.times_of("WATCHDOG", since=frozen - 1, until=thawed)
            window = [frozen, *[at for at in pings if at >= frozen], thawed]
            gaps = [b - a for a, b in itertools.pairwise(window)]
            assert max(gaps) < 2 * notifier.watchdog_interval, f"pings stopped: gaps {gaps}"
            assert liveness.is_alive()
        finally:
            liveness.stop()
    assert not liveness.is_alive()


def test_a_liveness_thread_that_fails_says_so(tmp_path: Path) -> None:
    """The service stops with a failure exit when this is so (systemd restarts it)."""

    def settling() -> int:
        raise RuntimeError("a bug in the settle count")

    own = connect(tmp_path, None, None, "host-a")
    liveness = Liveness(load_config(None), Notifier({}), own, lambda: True, settling, 0.0)
    liveness.start()
    try:
        wait_until(lambda: not liveness.is_alive(), 10, "the failing thread to end")
        assert isinstance(liveness.failure, RuntimeError)
    finally:
        liveness.stop()
