"""A job as stemd shows it (`GET /api/v1/jobs/{id}`, and the body of its
callback), made from the ledger and the outbox alone: the daemon posts
callbacks with the HTTP server off too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stemd.choices import output_of_params, shown_choices
from stemd.config import OutputConfig
from stemd.ledger import JobRecord, JobState, Ledger
from stemd.manifest import manifest_stems

API = "/api/v1"


def stem_files(job: JobRecord, outbox: Path, folder: str | None = None) -> dict[str, Path]:
    """stem name -> its file, from the manifest of the job's folder (or `folder`);
    nothing when that manifest names anything but plain files of its own folder
    (stemd.manifest: it is on the share, and may have been edited)."""
    where = folder or job.output_dir
    if job.state is not JobState.DONE or not where:
        return {}
    return manifest_stems(outbox / where, outbox) or {}


def job_json(
    job: JobRecord, ledger: Ledger, outbox: Path, progress: float | None = None
) -> dict[str, Any]:
    """The job's JSON; `progress`: a running worker's own figure, fresher than the
    ledger's (written once a second)."""
    url = f"{API}/jobs/{job.id}"
    stems = stem_files(job, outbox)
    return {
        "id": job.id,
        "state": job.state.value,
        "progress": round(job.progress if progress is None else progress, 4),
        "queue_position": ledger.queue_position(job),
        "source": job.source,
        "sha256": job.sha256,
        "attempts": job.attempts,
        "error": job.error,
        # a failure's cause: "input" (the file; the same bytes fail again) or "stemd"
        "fault": job.fault.value if job.fault else None,
        # a failure taken off the list (stemd dismiss, the dismiss route, or its
        # file replaced by good audio): not counted, listed only when asked for
        "dismissed": job.state is JobState.FAILED and not ledger.failure_is_current(job.id),
        "created": job.created_at,
        "started": job.started_at,
        "finished": job.finished_at,
        "output_dir": job.output_dir or None,
        # the per-job keys it is rendered with (stemd.choices), from its parameters
        # (None for a job made before jobs kept them)
        "output": (
            shown_choices(output_of_params(OutputConfig(), job.params))
            if job.params is not None
            else None
        ),
        "url": url,
        "stems": {stem: f"{url}/stems/{stem}" for stem in stems},
        "zip": f"{url}/stems.zip" if stems else None,
    }
