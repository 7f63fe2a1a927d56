"""What stemd says when a job is done, when one failed, and when the queue ran
empty: a title and a line for people (Apprise), and a JSON object for programs
(webhooks)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any, Literal

from stemd.ledger import Drained, JobRecord

NotifyEvent = Literal["done", "failed", "drained"]


@dataclass(frozen=True)
class Message:
    event: NotifyEvent
    title: str
    body: str
    payload: dict[str, Any] = field(default_factory=dict)  # the webhook's JSON


def spoken_duration(seconds: float) -> str:
    """12 s, 14 min, 2 h 5 min: how long, as a person says it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def job_message(
    event: Literal["done", "failed"],
    source: str,
    job: JobRecord | None,
    error: str | None,
    stems: dict[str, str],
    audio_seconds: float | None,
    separation_seconds: float | None,
) -> Message:
    """A job's end. `job` is None for a file refused before it had one (not
    audio, too long); `stems` maps stem names to outbox-relative paths."""
    durations: dict[str, float | None] = {
        "audio": _rounded(audio_seconds),
        "separation": _rounded(separation_seconds),
        "queued": None,
        "total": None,
    }
    if job is not None and job.finished_at is not None:
        durations["total"] = _rounded(job.finished_at - job.created_at)
        if job.started_at is not None:
            durations["queued"] = _rounded(max(0.0, job.started_at - job.created_at))
    payload: dict[str, Any] = {
        "event": event,
        "source": source,
        "sha256": job.sha256 if job is not None else None,
        "state": event,
        "job": job.id if job is not None else None,
        "folder": job.output_dir if job is not None else None,
        "stems": stems,
        "error": error,
        "durations": durations,
        "host": socket.gethostname(),
    }
    if event == "done":
        what = f"{len(stems)} stems in {job.output_dir}" if job and job.output_dir else "stems"
        timing = ""
        if audio_seconds is not None and separation_seconds is not None:
            timing = (
                f" ({spoken_duration(audio_seconds)} of audio separated in "
                f"{spoken_duration(separation_seconds)})"
            )
        return Message(event, f"stemd: {source} done", f"{what}{timing}", payload)
    return Message(event, f"stemd: {source} failed", error or "failed", payload)


def drained_message(drained: Drained) -> Message:
    """One summary for a batch: 12 done, 1 failed in 14 min."""
    text = f"{drained.done} done, {drained.failed} failed in {spoken_duration(drained.seconds)}"
    payload: dict[str, Any] = {
        "event": "drained",
        "state": "drained",
        "done": drained.done,
        "failed": drained.failed,
        "seconds": round(drained.seconds, 3),
        "summary": text,
        "host": socket.gethostname(),
    }
    return Message("drained", "stemd: the queue is empty", text, payload)
