"""The ledger's jobs from the command line: status, retry, dismiss."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from stemd.cli.common import config_from, open_ledger
from stemd.config import Config
from stemd.errors import EX_OK, EX_SOFTWARE, ConfigError, StateError


def _alive(pid: int) -> bool:
    """Whether the process that wrote the settling count still runs."""
    if pid <= 0:  # never recorded (and kill(0, ...) would ask about our own group)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process (the service's user): alive
    return True


def _status_report(config: Config) -> dict[str, Any]:
    """What `status` shows. The contract's keys (counts, running, failed) come
    first; the rest was added without changing them."""
    from stemd.ledger import LEDGER_FILE, InputState, JobState

    if not (config.state_dir / LEDGER_FILE).exists():
        return {
            "counts": {state.value: 0 for state in JobState},
            "running": [],
            "queued": [],
            "failed": [],
            "intake": {"settling": 0, "waiting_for_hash": 0},
            "copies": 0,
            "note": f"no ledger in {config.state_dir} yet: the daemon has not run with it",
        }
    ledger = open_ledger(config)
    now = time.time()
    try:
        settling, pid = ledger.settling()
        return {
            # queued includes files waiting to be hashed (intake.waiting_for_hash)
            "counts": ledger.counts(),
            "running": [
                {"source": job.source, "progress": round(job.progress, 3), "attempts": job.attempts}
                for job in ledger.jobs_in(JobState.RUNNING)
            ],
            # waiting jobs with their attempts used so far and, after a failed
            # attempt or a full outbox, why they wait and for how much longer
            "queued": [
                {
                    "source": job.source,
                    "sha256": job.sha256,
                    "attempts": job.attempts,
                    "error": job.error,
                    "retry_in": round(max(0.0, job.not_before - now), 1),
                }
                for job in ledger.jobs_in(JobState.QUEUED)
            ],
            "failed": ledger.failed_report(),
            # files the daemon has seen but not taken in yet: still being written
            # or settling (its memory), or settled and waiting to be hashed
            "intake": {
                "settling": settling if _alive(pid) else 0,
                "waiting_for_hash": ledger.count_inputs(InputState.PENDING),
            },
            # inputs served from stems that existed already (identical content)
            "copies": ledger.count_inputs(InputState.DUPLICATE),
        }
    finally:
        ledger.close()


def cmd_status(args: argparse.Namespace) -> int:
    config, _ = config_from(args)
    report = _status_report(config)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return EX_OK
    if "note" in report:
        raise StateError(f"{config.state_dir}: no ledger yet; start the daemon (stemd run) first")
    counts = report["counts"]
    print(
        "  ".join(f"{state} {counts[state]}" for state in ("queued", "running", "done", "failed"))
        + f"  copies {report['copies']}"
    )
    intake = report["intake"]
    if intake["settling"]:
        print(f"settling: {intake['settling']} file(s) still being written or settling")
    if intake["waiting_for_hash"]:
        print(f"hashing: {intake['waiting_for_hash']} file(s) waiting (counted as queued)")
    for job in report["running"]:
        print(f"running: {job['source']} {job['progress']:.0%} (attempt {job['attempts']})")
    for job in report["queued"]:
        if job["error"]:
            print(
                f"waiting: {job['source']} ({job['attempts']} attempt(s) used; "
                f"next try in {job['retry_in']:.0f}s): {job['error']}"
            )
    if report["failed"]:
        print("recent failures:")
        for item in report["failed"]:
            sha = (item["sha256"] or "")[:12] or "-"
            print(
                f"  {item['source']} (sha256 {sha}, attempts {item['attempts']}): {item['error']}"
            )
    return EX_OK


def _sha256_prefix(args: argparse.Namespace) -> str | None:
    """The hash prefix a command was given, checked; None for --failed."""
    if args.failed:
        return None
    prefix: str = args.sha256
    if len(prefix) < 6 or any(c not in "0123456789abcdefABCDEF" for c in prefix):
        raise ConfigError.single(
            "command line", "SHA256", f"{prefix!r} is not a sha256 prefix (6+ hex digits)"
        )
    return prefix


def _on_failures(
    args: argparse.Namespace, action: Callable[[Any, str | None], int], done: str
) -> int:
    """Apply `action` (retry, dismiss) to the failures the command names; a hash
    prefix that names none is said so, with exit 1."""
    config, _ = config_from(args)
    prefix = _sha256_prefix(args)
    ledger = open_ledger(config)
    try:
        count = action(ledger, prefix)
    finally:
        ledger.close()
    if prefix is not None and count == 0:
        print(
            f"stemd: no current failure has a sha256 starting {prefix}; "
            "`stemd status` lists them with their hashes",
            file=sys.stderr,
        )
        return EX_SOFTWARE
    print(done.format(count=count))
    return EX_OK


def cmd_retry(args: argparse.Namespace) -> int:
    return _on_failures(
        args, lambda ledger, prefix: ledger.retry(prefix), "{count} job(s) queued again"
    )


def cmd_dismiss(args: argparse.Namespace) -> int:
    return _on_failures(
        args,
        lambda ledger, prefix: ledger.dismiss(prefix),
        "{count} failure(s) dismissed; their files are left as they are",
    )
