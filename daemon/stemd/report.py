"""The status report: what `stemd status --json` prints and `GET /api/v1/status`
answers, from one ledger."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from stemd.ledger import InputState, JobState, Ledger, NodeRecord

# a daemon reports itself every 2 s; one silent for this long has stopped
NODE_SILENT_S = 15.0


def _alive(node: NodeRecord) -> bool:
    """Whether a daemon that reported to the ledger still runs: on this host,
    its process is there (a daemon alone on its ledger reports only changes);
    elsewhere, it was heard from lately."""
    if node.host != socket.gethostname() or node.pid <= 0:
        return node.age <= NODE_SILENT_S
    try:
        os.kill(node.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process (the service's user): alive
    return True


def nodes_report(ledger: Ledger) -> list[dict[str, Any]]:
    """Every daemon sharing the ledger that still runs, with its workers."""
    return [
        {
            "node": node.node,
            "host": node.host,
            "pid": node.pid,
            "seen_s_ago": round(node.age, 1),
            "settling": node.settling,
            "workers": node.workers,
        }
        for node in ledger.nodes()
        if _alive(node)
    ]


def no_ledger_report(state_dir: Path) -> dict[str, Any]:
    return {
        "counts": {state.value: 0 for state in JobState},
        "running": [],
        "queued": [],
        "failed": [],
        "intake": {"settling": 0, "waiting_for_hash": 0},
        "copies": 0,
        "nodes": [],
        "note": f"no ledger in {state_dir} yet: the daemon has not run with it",
    }


def status_report(ledger: Ledger) -> dict[str, Any]:
    """The contract's keys (counts, running, failed) come first; the rest was
    added without changing them."""
    now = time.time()
    nodes = nodes_report(ledger)
    return {
        # queued includes files waiting to be hashed (intake.waiting_for_hash)
        "counts": ledger.counts(),
        "running": [
            {
                "source": job.source,
                "progress": round(job.progress, 3),
                "attempts": job.attempts,
                "worker": job.lease_owner,
            }
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
            "settling": sum(node["settling"] for node in nodes),
            "waiting_for_hash": ledger.count_inputs(InputState.PENDING),
        },
        # inputs served from stems that existed already (identical content)
        "copies": ledger.count_inputs(InputState.DUPLICATE),
        # the daemons sharing this ledger (one, unless ledger.url is shared)
        # and what each of their workers is doing
        "nodes": nodes,
    }
