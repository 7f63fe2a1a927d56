"""Several daemons, one share, one PostgreSQL ledger: what several hosts on one
NAS do, on one machine. Each daemon is a real subprocess with its own
state_dir; the inbox, outbox and ledger are shared; the PostgreSQL server is a
real private one (tests/support/postgres.py) that the tests stop and restart.

Exactly once is counted from what the daemons did, not from what they say:
every pass of the instrumented model over audio is appended to a record file
(one per daemon, with its pid), and the outbox is read back.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.audio import make_tracks
from support.daemon import Daemon, write_config
from support.http import EPHEMERAL, client, http_url
from support.instrumented_model import (
    FEATHER,
    Record,
    instrumented_model,
    model_env,
)
from support.postgres import PostgresServer
from support.published import published_manifests
from support.waiting import wait_until

LEASE_S = 2.0
pytestmark = pytest.mark.slow


class Share:
    """One share (inbox, outbox, archive) and one ledger, and the daemons on them."""

    def __init__(self, root: Path, repo: Path, url: str) -> None:
        self.root = root
        self.repo = repo
        self.url = url
        self.inbox = root / "share" / "inbox"
        self.outbox = root / "share" / "outbox"
        self.archive = root / "share" / "archive"
        self.inbox.mkdir(parents=True)
        self.daemons: list[Daemon] = []

    def daemon(
        self,
        name: str,
        model: str = FEATHER,
        gated: bool = False,
        env: dict[str, str] | None = None,
        sections: dict[str, dict[str, Any]] | None = None,
    ) -> Daemon:
        """A daemon (not started) of its own state_dir, on the share; `env` is
        added to its environment, `sections` to its config's sections."""
        home = self.root / name
        home.mkdir()
        config: dict[str, Any] = {
            "inbox": str(self.inbox),
            "outbox": str(self.outbox),
            "state_dir": str(home / "state"),
            "watch": {"settle": "0.5s"},
            "model": {**instrumented_model(self.repo, model), "shifts": 0},
            "source": {"after_success": "move", "archive_dir": str(self.archive)},
            "logging": {"target": "stderr"},
            "http": EPHEMERAL,
            "ledger": {"url": self.url, "lease": f"{LEASE_S:g}s"},
        }
        for section, keys in (sections or {}).items():
            config[section] = {**config.get(section, {}), **keys}
        model_vars, _record = model_env(home, gate=gated)
        daemon = Daemon(
            write_config(home / "stemd.yaml", config), home, env={**model_vars, **(env or {})}
        )
        self.daemons.append(daemon)
        return daemon

    def record(self, daemon: Daemon) -> Record:
        return Record(daemon.cwd / "separations.jsonl")

    def gate(self, daemon: Daemon) -> Path:
        return daemon.cwd / "gate"

    def published(self) -> dict[str, list[dict[str, Any]]]:
        """{source: [manifest, ...]} of every published folder."""
        found: dict[str, list[dict[str, Any]]] = {}
        for manifest in published_manifests(self.outbox):
            found.setdefault(manifest["source"], []).append(manifest)
        return found

    def archived(self) -> list[str]:
        """The names in the archive folder, sorted (none before it exists)."""
        if not self.archive.is_dir():
            return []
        return sorted(p.name for p in self.archive.iterdir())

    def status(self) -> dict[str, Any]:
        """`stemd status --json` as run on the first host."""
        assert self.daemons
        return self.daemons[0].status()

    def report(self) -> dict[str, Any]:
        """The same report, read in this process: cheap enough to poll."""
        assert self.daemons
        return self.daemons[0].report()

    def drop(self, names: list[str], staging: Path) -> None:
        for name in names:
            os.rename(staging / name, self.inbox / name)

    def stop_all(self) -> None:
        for daemon in self.daemons:
            gate = self.gate(daemon)
            if gate.is_dir():  # a test that failed may leave a host held in its model
                (gate / "open").touch()
            if daemon.process is not None and daemon.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(daemon.pid, signal.SIGCONT)
                daemon.stop(timeout=60)


@pytest.fixture
def share(tmp_path: Path, instrumented_repo: Path, postgres: PostgresServer) -> Iterator[Share]:
    share = Share(tmp_path, instrumented_repo, postgres.new_database())
    try:
        yield share
    finally:
        share.stop_all()
        for daemon in share.daemons:
            daemon.kill()


def done_lines(daemon: Daemon) -> list[str]:
    return [line for line in daemon.log().splitlines() if ": stems in " in line]


def test_three_daemons_share_200_files_each_separated_and_disposed_once(share: Share) -> None:
    daemons = [share.daemon(f"host{i}") for i in range(3)]
    for daemon in daemons:
        daemon.start()
    for daemon in daemons:
        daemon.wait_warm()
    names = make_tracks(share.root / "staging", count=200)
    share.drop(names, share.root / "staging")

    def all_done() -> bool:
        counts = share.report()["counts"]
        return bool(counts["done"] == 200 and counts["queued"] == 0 and counts["running"] == 0)

    wait_until(all_done, 240, "200 files done by three daemons")
    status = share.status()
    assert status["counts"]["failed"] == 0
    assert sorted(node["host"] for node in status["nodes"]) == [os.uname().nodename] * 3

    # separated exactly once: 200 passes over audio in all, every daemon at work
    passes = [share.record(daemon).count() for daemon in daemons]
    assert sum(passes) == 200, passes
    assert all(count > 0 for count in passes), f"a daemon did nothing: {passes}"
    done = [line for daemon in daemons for line in done_lines(daemon)]
    assert len(done) == 200
    # one stem folder each
    published = share.published()
    assert sorted(published) == sorted(names)
    assert all(len(manifests) == 1 for manifests in published.values())
    # every source moved once, by one daemon
    wait_until(lambda: not any(share.inbox.iterdir()), 30, "the inbox to be emptied")
    assert share.archived() == sorted(names)
    moved = sum(daemon.log().count(": source moved") for daemon in daemons)
    assert moved == 200
    for daemon in daemons:
        assert "Traceback" not in daemon.log()
        assert daemon.stop() == 0


def test_a_dead_host_is_taken_over_a_stopped_one_publishes_nothing_and_a_restarted_database_loses_nothing(  # noqa: E501
    share: Share, postgres: PostgresServer
) -> None:
    staging = share.root / "staging"
    names = make_tracks(staging, count=14)
    first = share.daemon("first", gated=True).start()
    first.wait_warm()

    # 1. SIGKILL: the job a dead host held is taken over once its lease runs out
    share.drop(names[:1], staging)
    wait_until(lambda: (share.gate(first) / "entered").exists(), 60, "first to hold a job")
    second = share.daemon("second", gated=True).start()
    second.wait_warm()
    first.kill()
    wait_until(lambda: (share.gate(second) / "entered").exists(), 60, "second to take it over")
    assert "taken over from" in second.log()
    (share.gate(second) / "open").touch()
    wait_until(lambda: names[0] in share.published(), 60, "the taken-over job published")
    assert len(share.published()[names[0]]) == 1

    # 2. SIGSTOP past the lease, then SIGCONT: the late host publishes nothing
    (share.gate(second) / "open").unlink()
    (share.gate(second) / "entered").unlink()
    share.drop(names[1:2], staging)
    wait_until(lambda: (share.gate(second) / "entered").exists(), 60, "second to hold a job")
    os.kill(second.pid, signal.SIGSTOP)
    third = share.daemon("third", gated=True).start()
    third.wait_warm()
    wait_until(lambda: (share.gate(third) / "entered").exists(), 60, "third to take it over")
    (share.gate(third) / "open").touch()
    wait_until(lambda: names[1] in share.published(), 60, "the new owner's stems")
    (manifest,) = share.published()[names[1]]
    (share.gate(second) / "open").touch()
    os.kill(second.pid, signal.SIGCONT)

    def dropped_by_second() -> bool:
        return "another took it over; dropping it here" in second.log()

    wait_until(dropped_by_second, 60, "the late host to drop the job")
    assert share.published()[names[1]] == [manifest], "the new owner's stems were touched"
    assert [line for line in done_lines(second) if names[1] in line] == []

    # 3. PostgreSQL restarted, then away for a while, with a job in each host's
    # hands and others queued: nothing lost, nothing doubled, /ping says 503
    for host in (second, third):
        (share.gate(host) / "open").unlink()
        (share.gate(host) / "entered").unlink(missing_ok=True)
    share.drop(names[2:], staging)
    for host in (second, third):
        wait_until(lambda h=host: (share.gate(h) / "entered").exists(), 60, "a job in hand")
    postgres.restart()
    with client(http_url(third)) as http:
        postgres.stop()
        wait_until(lambda: http.get("/ping").status_code == 503, 30, "/ping to say 503")
        ping = http.get("/ping").text
        assert "the ledger is unreachable" in ping
        # /ping answers without a token: it must not tell anyone where the database is
        assert "postgresql" not in ping and postgres.root.name not in ping
        postgres.start()
        wait_until(lambda: http.get("/ping").status_code == 200, 60, "/ping to recover")
    for host in (second, third):
        (share.gate(host) / "open").touch()

    def all_done() -> bool:
        counts = share.report()["counts"]
        return bool(counts["done"] == len(names) and counts["queued"] + counts["running"] == 0)

    wait_until(all_done, 120, "every file done after the restarts")
    assert share.status()["counts"]["failed"] == 0
    published = share.published()
    assert sorted(published) == sorted(names)
    assert all(len(manifests) == 1 for manifests in published.values()), {
        source: len(m) for source, m in published.items() if len(m) > 1
    }
    for daemon in (second, third):
        log = daemon.log()
        assert "is reachable again" in log or "reachable; starting" in log, log[-3000:]
        assert "Traceback" not in log
    # a job counts as done before its source is moved: wait for the last move
    wait_until(lambda: share.archived() == sorted(names), 30, "every source archived")
    # the killed host is gone from status: the two that run are there
    assert len(share.status()["nodes"]) == 2


def test_an_idle_host_takes_over_the_files_a_busy_host_registered(share: Share) -> None:
    """A host hashes the files it registered between its jobs. While its one
    worker is held in a long job, an idle host takes them over, rather than
    waiting beside a queue only the busy host could fill."""
    staging = share.root / "staging"
    names = make_tracks(staging, count=4)
    busy = share.daemon("busy", gated=True, sections={"logging": {"level": "debug"}}).start()
    busy.wait_warm()
    share.drop(names[:1], staging)
    wait_until(lambda: (share.gate(busy) / "entered").exists(), 60, "the busy host's long job")
    # the busy host is the only one running: it registers the rest
    share.drop(names[1:], staging)
    for name in names[1:]:
        wait_until(lambda n=name: f"settled: {n}" in busy.log(), 30, f"{name} registered")
    idle = share.daemon("idle").start()
    wait_until(lambda: sorted(share.published()) == names[1:], 60, "the idle host's stems")
    assert share.record(idle).count() == 3
    assert share.record(busy).count() == 1  # still held in its first job
    (share.gate(busy) / "open").touch()
    wait_until(lambda: sorted(share.published()) == names, 60, "the busy host's stems")
    assert all(len(manifests) == 1 for manifests in share.published().values())


def test_a_host_of_other_output_settings_renders_a_job_as_its_key_says(
    share: Share,
) -> None:
    """Hosts of different configs (one model) on one ledger: a job is keyed by
    the output settings of the host that hashed it and keeps their parameters,
    so an idle host of other settings takes it and renders it as its key says
    (stems filed under a key that names another format would be served as such
    to every later copy of the same audio)."""
    staging = share.root / "staging"
    names = make_tracks(staging, count=2)
    share.drop(names, staging)  # both there before the wav host starts: it hashes both
    wav = share.daemon("wav", gated=True).start()
    wait_until(lambda: (share.gate(wav) / "entered").exists(), 60, "the wav host's first job")
    wait_until(lambda: share.report()["counts"]["queued"] == 1, 30, "the second job queued")
    flac = share.daemon("flac", sections={"output": {"format": "flac"}}).start()
    # the idle flac host renders the queued job while the wav host is held
    wait_until(lambda: share.report()["counts"]["done"] == 1, 60, "the flac host's job")
    assert share.record(flac).count() == 1
    (share.gate(wav) / "open").touch()
    wait_until(lambda: share.report()["counts"]["done"] == 2, 60, "both jobs done")
    published = share.published()
    assert sorted(published) == names
    for (manifest,) in published.values():
        assert set(manifest["stems"].values()) == {f"{s}.wav" for s in manifest["stems"]}
        assert manifest["output"]["format"] == "wav"
    assert share.record(wav).count() == 1


def test_files_that_settle_while_the_database_is_away_are_taken_in_when_it_is_back(
    share: Share, postgres: PostgresServer
) -> None:
    """Settled files the ledger could not register wait in the daemon, not
    for the next rescan (an hour here)."""
    staging = share.root / "staging"
    names = make_tracks(staging, count=5)
    host = share.daemon(
        "host",
        sections={"watch": {"rescan_interval": "1h"}, "logging": {"level": "debug"}},
    ).start()
    host.wait_warm()
    postgres.stop()
    try:
        wait_until(lambda: "waiting for it and trying again" in host.log(), 30, "the outage seen")
        share.drop(names, staging)
        wait_until(
            lambda: "5 settled file(s) wait for the ledger" in host.log(), 30, "all five settled"
        )
    finally:
        postgres.start()
    wait_until(lambda: sorted(share.published()) == names, 60, "all five separated")
    # the source moves after its stems are published: wait for the last move
    wait_until(lambda: share.archived() == names, 30, "all five sources archived")


def stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP): its state in /proc is T."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0] == "T"


def test_a_host_stopped_with_its_stems_written_publishes_nothing_when_it_wakes(
    share: Share,
) -> None:
    """The fence at the publishing rename: a host suspended after writing its
    stems, past its lease, must check the lease before the rename."""
    staging = share.root / "staging"
    (name,) = make_tracks(staging, count=1)
    # the late host stops itself with its stems written, not yet renamed
    late = share.daemon("late", env={"STEMD_STOP_AT": "written"}).start()
    late.wait_warm()
    share.drop([name], staging)
    wait_until(lambda: stopped(late.pid), 60, "the late host to stop with its stems written")
    # the new owner takes the job over and is held in its model: it has not
    # published when the late host wakes, so nothing but the fence stops the
    # late host's rename
    owner = share.daemon("owner", gated=True).start()
    try:
        wait_until(lambda: (share.gate(owner) / "entered").exists(), 60, "the job taken over")
    except AssertionError as err:
        raise AssertionError(f"{err}; the owner's log:\n{owner.log()[-4000:]}") from None
    assert "taken over from" in owner.log()
    os.kill(late.pid, signal.SIGCONT)
    wait_until(lambda: "dropping it here" in late.log(), 60, "the late host to drop its stems")
    assert name not in share.published(), "the late host published without its lease"
    # its temp folder goes just after that line (the owner, held in its model,
    # has written none yet)
    wait_until(
        lambda: not any(share.outbox.rglob(".stemd-tmp/*")), 30, "the late host's temp folder"
    )
    (share.gate(owner) / "open").touch()
    wait_until(lambda: name in share.published(), 60, "the owner's stems")
    assert len(share.published()[name]) == 1
    assert share.record(late).count() == share.record(owner).count() == 1
