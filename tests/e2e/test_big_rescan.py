"""A rescan of a big inbox on a PostgreSQL ledger does not hold up the daemon's
signs of life: the lease of the job it runs is renewed, and systemd's watchdog
is pinged, on time while 50 000 kept sources are checked against the ledger.

The daemon is a real subprocess on a real PostgreSQL server; the kept sources
are real files, registered in the daemon's ledger before it starts (as a daemon
that kept them would have left them: published, disposed). What is measured
comes from outside the daemon: the lease as the database holds it, sampled
every 0.1 s, and the WATCHDOG=1 datagrams on a real $NOTIFY_SOCKET.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path

import psycopg
import pytest

from stemd.ledger import connect
from support.audio import make_tone
from support.daemon import Daemon, service_config
from support.instrumented_model import GATED, build_instrumented_repo, instrumented_model, model_env
from support.notify import NotifySocket
from support.postgres import PostgresServer
from support.waiting import wait_until

pytestmark = pytest.mark.slow

FOLDERS, PER_FOLDER = 250, 200  # 50 000 kept sources, as an album collection holds them
LEASE_S = 2.0
WATCHDOG_USEC = 6_000_000  # pings due every 3 s
PERIOD_S = WATCHDOG_USEC / 1e6
RESCAN_S = 4.0


def kept_sources(inbox: Path) -> list[tuple[str, str, os.stat_result]]:
    """FOLDERS x PER_FOLDER small files below `inbox`: (path, relative, stat)."""
    made = []
    for folder in range(FOLDERS):
        album = inbox / "kept" / f"album{folder:03d}"
        album.mkdir(parents=True)
        for track in range(PER_FOLDER):
            path = album / f"{track:03d}.wav"
            path.write_bytes(b"RIFF")
            made.append((str(path), path.relative_to(inbox).as_posix(), path.stat()))
    return made


def register_kept(url: str, state: Path, files: list[tuple[str, str, os.stat_result]]) -> None:
    """The files as a daemon that separated and kept them leaves them in its ledger:
    the schema made by stemd itself, the rows written in one COPY (50 000 inserts
    through the ledger's API would take a minute)."""
    connect(state, url, None, "seed").close()
    now = time.time()
    with psycopg.connect(url) as db, db.cursor() as cursor:
        columns = (
            "path, relative, dev, ino, size, mtime_ns, state, disposed, detected_at, updated_at"
        )
        with cursor.copy(f"COPY inputs ({columns}) FROM STDIN") as copy:
            for path, relative, info in files:
                # a shared ledger stores no device number (it differs per host)
                version = (0, info.st_ino, info.st_size, info.st_mtime_ns)
                copy.write_row((path, relative, *version, "published", 1, now, now))


def lease_left(url: str) -> list[float]:
    """Seconds left on each running job's lease, on the database's clock."""
    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute(
            "SELECT lease_until - extract(epoch FROM clock_timestamp()) FROM jobs "
            "WHERE state = 'running'"
        ).fetchall()
    return [float(row[0]) for row in rows]


def test_a_rescan_of_50000_kept_files_keeps_the_lease_and_the_watchdog(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    root = tmp_path.resolve()
    url = postgres.new_database()
    files = kept_sources(root / "inbox")
    register_kept(url, root / "state", files)
    model_vars, _record = model_env(root, gate=True)
    config = service_config(
        root,
        model=instrumented_model(build_instrumented_repo(root / "models"), GATED),
        watch={"settle": "0.5s", "rescan_interval": f"{RESCAN_S:g}s"},
        ledger={"url": url, "lease": f"{LEASE_S:g}s"},
        service={"hang_timeout": "10m"},  # the gated job is held on purpose
        logging={"target": "stderr", "level": "debug"},
    )
    gate = root / "gate"
    with NotifySocket(root / "notify.sock") as systemd:
        env = {
            **model_vars,
            "NOTIFY_SOCKET": str(systemd.path),
            "WATCHDOG_USEC": str(WATCHDOG_USEC),
        }
        daemon = Daemon(config, root, env=env).start()
        try:
            daemon.wait_ready(180)
            shutil.copyfile(make_tone(root / "song.wav", 1.0), root / "inbox" / "song.wav")
            wait_until((gate / "entered").exists, 60, "the job to be held in the model")

            # Two full rescans while the job is held, its lease sampled throughout.
            start = time.monotonic()
            scanned = f"scanned {root / 'inbox'}: "
            rescans_before = daemon.log().count(scanned)
            samples: list[float] = []

            def two_rescans() -> bool:
                samples.extend(lease_left(url))
                return daemon.log().count(scanned) >= rescans_before + 2

            wait_until(two_rescans, 180, "two rescans of the inbox")
            end = time.monotonic()
            assert samples, "no running job was seen"
            assert min(samples) > 0, f"the lease ran out during a rescan: {min(samples):.2f}s left"
            pings = [at for at in systemd.times_of("WATCHDOG", since=start - PERIOD_S) if at <= end]
            window = [p for p in pings if p < start][-1:] + [p for p in pings if p >= start] + [end]
            gaps = [b - a for a, b in itertools.pairwise(window)]
            assert max(gaps) < PERIOD_S, f"pings paused during a rescan: gaps {gaps}"
            print(f"lease left at least {min(samples):.2f}s; pings at most {max(gaps):.2f}s apart")
            assert f"{scanned}{FOLDERS * PER_FOLDER + 1} files" in daemon.log()  # all were seen

            (gate / "open").touch()
            wait_until(lambda: daemon.report()["counts"]["done"] == 1, 60, "the job to finish")
            assert "ran out" not in daemon.log()  # the worker never saw its lease lost
            assert daemon.stop() == 0
        finally:
            (gate / "open").touch()
            daemon.kill()
