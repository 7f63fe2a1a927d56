"""Named crash points, so tests can kill stemd at the worst moments of a job.

Inert unless $STEMD_CRASH_AT names a point: then the process SIGKILLs itself
there (no cleanup, no flush), as a power cut or the OOM killer would. With
$STEMD_STOP_AT, it SIGSTOPs itself there, once: a host suspended (or cut off)
at that moment, that carries on where it was when it is sent SIGCONT.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Literal, get_args

CRASH_ENV = "STEMD_CRASH_AT"
STOP_ENV = "STEMD_STOP_AT"
_stopped: set[str] = set()  # the points this process has stopped at

# In the order a job meets them.
CrashPoint = Literal[
    "hashed",  # the input is hashed and attached to its job (committed)
    "claimed",  # the job is marked running (committed)
    "separating",  # the first chunk has been separated
    "written",  # every stem is encoded and fsynced in the temp folder, not renamed
    "renamed",  # the track folder is in place; the ledger does not know yet
    "committed",  # the job is done in the ledger; the source is not disposed of yet
]
CRASH_POINTS: tuple[CrashPoint, ...] = get_args(CrashPoint)


def crash_point(name: CrashPoint) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(STOP_ENV) == name and name not in _stopped:
        _stopped.add(name)
        # at this very thread: a SIGSTOP sent to the process may be taken by
        # another thread, and on a busy machine this one would run on for a
        # moment (far enough to publish) before the whole process stops
        signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
