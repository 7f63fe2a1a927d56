"""The ledger's jobs from the command line: status, retry, dismiss."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from stemd.cli.common import config_from, has_ledger, open_ledger
from stemd.config import Config
from stemd.errors import EX_OK, EX_SOFTWARE, ConfigError, StateError


def status_for(config: Config) -> dict[str, Any]:
    """What `status` shows: the ledger's report, or a note that there is none yet."""
    from stemd.report import no_ledger_report, status_report

    if not has_ledger(config):
        return no_ledger_report(config.state_dir)
    ledger = open_ledger(config)
    try:
        return status_report(ledger)
    finally:
        ledger.close()


def cmd_status(args: argparse.Namespace) -> int:
    config, _ = config_from(args)
    report = status_for(config)
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
    from stemd.logs import journal_events, retried_by_hand

    def retry(ledger: Any, prefix: str | None) -> int:
        jobs = ledger.retry_failed(prefix)
        if jobs and journal_events():  # a `retried` event each, as the daemon logs its own
            for job in jobs:
                retried_by_hand(job, "stemd retry")
        return len(jobs)

    return _on_failures(args, retry, "{count} job(s) queued again")


def cmd_dismiss(args: argparse.Namespace) -> int:
    return _on_failures(
        args,
        lambda ledger, prefix: ledger.dismiss(prefix),
        "{count} failure(s) dismissed; their files are left as they are",
    )
