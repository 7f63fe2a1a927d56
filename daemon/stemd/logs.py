"""Logging setup: journald (systemd-python) or stderr, with structured job fields.

Job-related records carry journal fields STEMD_EVENT, STEMD_JOB, STEMD_SHA256 and
STEMD_SOURCE (passed through `extra`), so `journalctl STEMD_EVENT=failed` finds
failures. On stderr each record is one line in plain words.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

LOGGER_NAME = "stemd"
log = logging.getLogger(LOGGER_NAME)

Event = Literal["detected", "duplicate", "started", "done", "failed", "retried", "ignored"]


def event(
    level: int,
    name: Event,
    message: str,
    *,
    job: int | None = None,
    sha256: str | None = None,
    source: str | None = None,
    exc_info: bool = False,
) -> None:
    """Log one job event with its structured fields."""
    fields: dict[str, object] = {"STEMD_EVENT": name}
    if job is not None:
        fields["STEMD_JOB"] = str(job)
    if sha256 is not None:
        fields["STEMD_SHA256"] = sha256
    if source is not None:
        fields["STEMD_SOURCE"] = source
    log.log(level, message, extra=fields, exc_info=exc_info)


def _stderr_is_journal() -> bool:
    """True when systemd connected our stderr to the journal ($JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in stream.split(":"))
        stat = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return stat.st_dev == device and stat.st_ino == inode


def setup_logging(target: str, level: str) -> str:
    """Route stemd's records to the journal or stderr. Returns where they go.

    Safe to call again (on reload): the previous handler is replaced, so no
    record is logged twice.
    """
    for handler in list(log.handlers):
        log.removeHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False

    use_journal = target == "journal" or (target == "auto" and _stderr_is_journal())
    fallback_reason = ""
    if use_journal:
        try:
            from systemd.journal import JournalHandler

            journal = JournalHandler(SYSLOG_IDENTIFIER="stemd")
            journal.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(journal)
            return "journal"
        except (ImportError, OSError) as err:
            fallback_reason = f"journald unavailable ({err}); logging to stderr"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("stemd: %(levelname)s: %(message)s"))
    log.addHandler(handler)
    if fallback_reason:
        log.warning(fallback_reason)
    return "stderr"
