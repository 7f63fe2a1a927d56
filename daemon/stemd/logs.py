"""Logging setup: journald (systemd-python) or stderr, with structured job fields.

Job-related records carry journal fields STEMD_EVENT, STEMD_JOB, STEMD_SHA256 and
STEMD_SOURCE (passed through `extra`), so `journalctl -t stemd STEMD_EVENT=failed`
finds failures. The log level becomes the journal PRIORITY (error -> err), and a
record logged with an exception carries its traceback in EXCEPTION_TEXT. On stderr
each record is one line in plain words.

Exactly one handler is installed, so no record is written twice: under systemd
with `logging.target: auto` stderr *is* the journal, and the structured handler
replaces it rather than adding to it.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from stemd.ledger.records import JobRecord

LOGGER_NAME = "stemd"
# Where sd_journal_send() writes; systemd-python has no way to point it elsewhere.
JOURNAL_SOCKET = "/run/systemd/journal/socket"
STDERR_FORMAT = "stemd: %(levelname)s: %(message)s"
OUTPUT_MARK = "stemd_output"  # set on the handlers setup_logging installs

log = logging.getLogger(LOGGER_NAME)

Item = dict[str, Any]  # a job event, as event_item gives it
Event = Literal["detected", "duplicate", "started", "done", "failed", "retried", "ignored"]


def event(
    level: int,
    name: Event,
    message: str,
    *,
    job: int | None = None,
    sha256: str | None = None,
    source: str | None = None,
    audio_seconds: float | None = None,
    elapsed: float | None = None,
    worker: str | None = None,
    exc_info: bool = False,
) -> None:
    """Log one job event with its structured fields (a separation's `done` also
    carries the track's length and the wall time it took, in seconds)."""
    fields: dict[str, object] = {"STEMD_EVENT": name}
    if job is not None:
        fields["STEMD_JOB"] = str(job)
    if sha256 is not None:
        fields["STEMD_SHA256"] = sha256
    if source is not None:
        fields["STEMD_SOURCE"] = source
    if audio_seconds is not None:
        fields["STEMD_AUDIO_SECONDS"] = f"{audio_seconds:.3f}"
    if elapsed is not None:
        fields["STEMD_ELAPSED"] = f"{elapsed:.3f}"
    if worker is not None:
        fields["STEMD_WORKER"] = worker
    log.log(level, message, extra=fields, exc_info=exc_info)


def job_event(
    level: int, name: Event, message: str, job: JobRecord, source: str, worker: str | None = None
) -> None:
    """Log a job event with its journal fields (STEMD_JOB, STEMD_SHA256,
    STEMD_SOURCE, and STEMD_WORKER when a worker did it)."""
    event(level, name, message, job=job.id, sha256=job.sha256, source=source, worker=worker)


def retried_by_hand(job: JobRecord, by: str) -> None:
    """The `retried` event of a failed job queued again by hand (`stemd retry`,
    the API), as outcomes.py logs an automatic retry."""
    job_event(
        logging.INFO,
        "retried",
        f"{job.source}: queued again by hand ({by}); attempts start over",
        job,
        job.source,
    )


def journal_events() -> bool:
    """A command's own job events (`stemd retry`'s `retried`) to the journal, beside
    the daemon's and with its identifier, when journald listens: there they are
    what `journalctl -t stemd STEMD_EVENT=retried` finds. Nowhere else: the
    command prints what it did. Returns whether they go there."""
    if journal_unreachable() is not None:
        return False
    try:
        handler = _journal_handler()
    except ImportError:
        return False
    handler.setLevel(logging.INFO)
    setattr(handler, OUTPUT_MARK, True)
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    return True


def event_item(record: logging.LogRecord) -> Item | None:
    """A job event's fields as a dict (for the HTTP event stream, metrics and
    notifications); None for a record that is not one."""
    name = getattr(record, "STEMD_EVENT", None)
    if name is None:
        return None
    job = getattr(record, "STEMD_JOB", None)
    item: Item = {
        "event": name,
        "job": int(job) if job is not None else None,
        "sha256": getattr(record, "STEMD_SHA256", None),
        "source": getattr(record, "STEMD_SOURCE", None),
        "message": record.getMessage(),
        "time": record.created,
    }
    for field, key in (("STEMD_AUDIO_SECONDS", "audio_seconds"), ("STEMD_ELAPSED", "elapsed")):
        value = getattr(record, field, None)
        if value is not None:
            item[key] = float(value)
    return item


def stderr_is_journal() -> bool:
    """True when systemd connected our stderr to the journal ($JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in stream.split(":"))
        stat = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return stat.st_dev == device and stat.st_ino == inode


def journal_unreachable() -> str | None:
    """Why records sent to journald would be lost, or None when it listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(JOURNAL_SOCKET)
        except OSError as err:
            return f"{JOURNAL_SOCKET}: {err.strerror or err}"
    return None


def _stderr_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(STDERR_FORMAT))
    return handler


def _journal_handler() -> logging.Handler:
    """systemd-python's JournalHandler that moves to stderr, saying so once, if
    journald goes away while we run (rather than a traceback per record)."""
    from systemd.journal import JournalHandler, send

    class FallbackJournalHandler(JournalHandler):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(SYSLOG_IDENTIFIER="stemd", sender_function=self._send)
            self.setFormatter(logging.Formatter("%(message)s"))
            self.fallback: logging.Handler | None = None
            self._send_error: OSError | None = None

        def _send(self, *args: Any, **fields: Any) -> None:
            try:
                send(*args, **fields)
            except OSError as err:
                self._send_error = err

        def emit(self, record: logging.LogRecord) -> None:
            if self.fallback is None:
                self._send_error = None
                super().emit(record)
                if self._send_error is None:
                    return
                self.fallback = _stderr_handler()
                self.fallback.emit(
                    _fallback_notice(f"journald stopped listening ({self._send_error})")
                )
            self.fallback.emit(record)

    return FallbackJournalHandler()


def _fallback_notice(reason: str) -> logging.LogRecord:
    return log.makeRecord(
        LOGGER_NAME, logging.WARNING, __file__, 0, f"{reason}; logging to stderr", (), None
    )


# Libraries whose warnings a user must see where stemd's own go (the journal).
LIBRARY_LOGGERS = ("watchdog", "uvicorn")


class _Forward(logging.Handler):
    """Hands a library's records to stemd's handlers."""

    def emit(self, record: logging.LogRecord) -> None:
        log.handle(record)


def _forward_libraries() -> None:
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        if not any(isinstance(handler, _Forward) for handler in library.handlers):
            library.addHandler(_Forward())
        library.setLevel(logging.WARNING)
        library.propagate = False  # not also to Python's last-resort stderr printer


def setup_logging(target: str, level: str) -> str:
    """Route stemd's records to the journal or stderr. Returns where they go.

    Safe to call again (on reload): the previous output handler is replaced, so
    no record is logged twice; in-process listeners (the HTTP server's event
    stream) stay. The level applies to the output: job events (info) still
    reach the listeners when the log shows warnings only.
    """
    for handler in list(log.handlers):
        if getattr(handler, OUTPUT_MARK, False):
            log.removeHandler(handler)
            handler.close()
    configured = logging.getLevelNamesMapping()[level.upper()]
    log.setLevel(min(configured, logging.INFO))
    log.propagate = False
    _forward_libraries()

    def install(handler: logging.Handler) -> None:
        handler.setLevel(configured)
        setattr(handler, OUTPUT_MARK, True)
        log.addHandler(handler)

    fallback_reason: str | None = None
    if target == "journal" or (target == "auto" and stderr_is_journal()):
        fallback_reason = journal_unreachable()
        if fallback_reason is None:
            try:
                install(_journal_handler())
                return "journal"
            except ImportError as err:
                fallback_reason = f"systemd-python is not installed ({err})"
        fallback_reason = f"journald unavailable: {fallback_reason}"
    install(_stderr_handler())
    if fallback_reason is not None:
        log.handle(_fallback_notice(fallback_reason))
    return "stderr"
