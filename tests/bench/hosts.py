"""`make bench` (second part): jobs per second through the ledger.

    python tests/bench/hosts.py [--quick] [--out bench-results]

The featherweight model (tests/support/instrumented_model.py) makes a
separation cost almost nothing, so what is timed is stemd's own path per file:
settle, register, hash, claim, decode, separate, encode, publish, commit,
dispose, and the ledger between them. Three set-ups, each timed from the moment
FILES tracks land in the inbox (one rename each) to the moment the ledger says
every one is done:

  sqlite    one daemon, the SQLite ledger in its state_dir (the default)
  pg        one daemon, a PostgreSQL ledger (a private server, fsync on)
  pg x3     three daemons, each its own state_dir, one inbox, outbox and ledger

Each round runs the three in turn (3 rounds; 1 with --quick); the machine's
speed drifts, so ratios are taken within a round and the table shows their
median and worst. On a machine with fewer cores than daemons, three daemons
share the cores: pg x3 against pg then measures what coordinating costs, not
what a second host would add. Table on stdout; JSON in OUT/hosts.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from stemd.ledger import LEDGER_FILE, connect  # noqa: E402
from support.audio import make_tracks  # noqa: E402
from support.daemon import Daemon, write_config  # noqa: E402
from support.instrumented_model import (  # noqa: E402
    FEATHER,
    build_instrumented_repo,
    instrumented_model,
    model_env,
)
from support.postgres import PostgresServer  # noqa: E402
from support.waiting import wait_until  # noqa: E402

SETUPS = ("sqlite", "pg", "pg x3")


def config_for(home: Path, share: Path, repo: Path, url: str | None) -> Path:
    config: dict[str, Any] = {
        "inbox": str(share / "inbox"),
        "outbox": str(share / "outbox"),
        "state_dir": str(home / "state"),
        "watch": {"settle": "0.5s"},
        "model": {**instrumented_model(repo, FEATHER), "shifts": 0},
        "logging": {"target": "stderr"},
        "http": {"listen": None},
    }
    if url is not None:
        config["ledger"] = {"url": url}
    return write_config(home / "stemd.yaml", config)


def run_setup(
    setup: str, work: Path, repo: Path, server: PostgresServer, files: int
) -> dict[str, float]:
    """One timed run of `setup`, in a fresh share and ledger."""
    root = Path(tempfile.mkdtemp(prefix="hosts-", dir=work))
    share = root / "share"
    (share / "inbox").mkdir(parents=True)
    names = make_tracks(root / "staging", count=files, seed=int(time.time()))
    url = None if setup == "sqlite" else server.new_database()
    count = 3 if setup == "pg x3" else 1
    daemons = []
    for i in range(count):
        home = root / f"daemon{i}"
        home.mkdir()
        config = config_for(home, share, repo, url)
        daemons.append(Daemon(config, home, env=model_env(home)[0]))
    try:
        for daemon in daemons:
            daemon.start()
        for daemon in daemons:
            daemon.wait_warm(timeout=120)
        ledger = connect(root / "daemon0" / "state", url, None)
        try:
            started = time.monotonic()
            for name in names:
                os.rename(root / "staging" / name, share / "inbox" / name)
            wait_until(
                lambda: ledger.counts()["done"] == files,
                600,
                f"{files} files through {setup}",
                interval=0.05,
            )
            seconds = time.monotonic() - started
            counts = ledger.counts()
        finally:
            ledger.close()
        if counts["failed"]:
            raise RuntimeError(f"{setup}: {counts['failed']} failed")
        return {"seconds": seconds, "jobs_per_s": files / seconds}
    finally:
        for daemon in daemons:
            daemon.stop(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer files, one round")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    files, rounds = (100, 1) if args.quick else (300, 3)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="stemd-hosts-bench-"))
    server = PostgresServer(fsync=True)
    try:
        repo = build_instrumented_repo(work / "models")
        runs: dict[str, list[dict[str, float]]] = {setup: [] for setup in SETUPS}
        for round_no in range(rounds):
            for setup in SETUPS:
                result = run_setup(setup, work, repo, server, files)
                runs[setup].append(result)
                print(
                    f"round {round_no + 1}: {setup}: {files} files in {result['seconds']:.1f}s "
                    f"({result['jobs_per_s']:.1f} jobs/s)",
                    file=sys.stderr,
                )
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)

    def ratios(a: str, b: str) -> list[float]:
        return [x["jobs_per_s"] / y["jobs_per_s"] for x, y in zip(runs[a], runs[b], strict=True)]

    pg_vs_sqlite = ratios("pg", "sqlite")
    three_vs_one = ratios("pg x3", "pg")
    result = {
        "files": files,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "ledger_file": LEDGER_FILE,
        "runs": runs,
        "pg_vs_sqlite": pg_vs_sqlite,
        "three_vs_one_daemon": three_vs_one,
    }
    (args.out / "hosts.json").write_text(json.dumps(result, indent=2))
    print(f"\n{files} featherweight tracks, {rounds} round(s), {os.cpu_count()} CPUs\n")
    print("| set-up | jobs/s (median) | jobs/s (each round) |")
    print("|---|---|---|")
    for setup in SETUPS:
        rates = [r["jobs_per_s"] for r in runs[setup]]
        each = ", ".join(f"{rate:.1f}" for rate in rates)
        print(f"| {setup} | {statistics.median(rates):.1f} | {each} |")
    print()
    print("| ratio (within a round) | median | worst |")
    print("|---|---|---|")
    print(
        f"| pg / sqlite, one daemon | {statistics.median(pg_vs_sqlite):.2f} "
        f"| {min(pg_vs_sqlite):.2f} |"
    )
    print(f"| pg x3 / pg x1 | {statistics.median(three_vs_one):.2f} | {min(three_vs_one):.2f} |")
    print(f"\nJSON: {args.out / 'hosts.json'}")


if __name__ == "__main__":
    main()
