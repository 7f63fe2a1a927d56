"""Standard output whose failures are typed errors, so `cli.main` can end a
command in one line (or quietly, for a closed pipe) instead of a traceback.

Python reports a closed pipe or a full disk on stdout as BrokenPipeError or
OSError from whichever `print` or flush meets it, and once more at exit when it
flushes what is left. Here every write goes through `_Descriptor`, which turns
those into `OutputClosed` / `OutputError`; `discard` then points the descriptor
at /dev/null so the flush at exit has nowhere to fail.
"""

from __future__ import annotations

import io
import os
import sys

from stemd.errors import OutputClosed, OutputError


class _Descriptor(io.FileIO):
    def write(self, data: bytes) -> int:  # type: ignore[override]
        try:
            return super().write(data) or 0
        except BrokenPipeError as err:
            raise OutputClosed("standard output was closed") from err
        except OSError as err:
            raise OutputError(f"cannot write to standard output: {err.strerror}") from err


def guard_stdout() -> None:
    """Route sys.stdout through `_Descriptor` (a no-op where stdout is not a
    file descriptor, as under a test's capture)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(_Descriptor(fd, "w", closefd=False)),
        encoding=sys.stdout.encoding,
        errors=sys.stdout.errors,
        line_buffering=bool(sys.stdout.line_buffering),
    )


def discard() -> None:
    """Send whatever is still buffered for stdout to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass  # not a descriptor: nothing will be flushed to it at exit
