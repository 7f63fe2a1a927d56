"""ffmpeg and ffprobe children, run under one set of rules.

Every child runs through `running`: no stdin unless we feed it (`-nostdin` is
the caller's to pass), a file-only protocol whitelist and `file:PATH` inputs
(`ffmpeg_input`) so a name can never be read as an option or a URL, a
wall-clock limit here and a CPU-time limit in ffmpeg itself (`-timelimit`, so
even an orphan ends), its own session (a Ctrl-C at the terminal is stemd's to
handle, not ffmpeg's), killed when the job is cancelled, and killed by
`kill_children` when stemd shuts down. A killed child is always reaped, within
REAP_TIMEOUT_S.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from stemd.errors import InputError, JobCancelled, StemdError

FFMPEG_TIMEOUT_S = 900.0  # per child; a streamed decode or encode of hours gets more
PROBE_TIMEOUT_S = 60.0
CANCEL_POLL_S = 0.2  # how soon a cancelled job's ffmpeg is killed
REAP_TIMEOUT_S = 5.0  # how long we wait for a killed child to be gone
READ_BYTES = 1 << 20

CancelCheck = Callable[[], bool]

_children: set[subprocess.Popen[bytes]] = set()
_children_lock = threading.Lock()


def kill_children(reap_timeout: float = REAP_TIMEOUT_S) -> int:
    """Kill every ffmpeg/ffprobe still running (at shutdown) and reap it, so none
    is left behind as a zombie or still holding its files. Returns how many."""
    with _children_lock:
        running = [child for child in _children if child.poll() is None]
    for child in running:
        child.kill()
    deadline = time.monotonic() + reap_timeout
    for child in running:
        _reap(child, max(0.0, deadline - time.monotonic()))
    return len(running)


def _reap(child: subprocess.Popen[bytes], timeout: float) -> None:
    # SIGKILL cannot be ignored: the wait ends as soon as the kernel has torn the
    # child down (a process stuck in uninterruptible I/O, e.g. on a hung NFS
    # share, may take longer: then it is left for init to reap).
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout)


def ffmpeg_input(path: Path) -> str:
    # "file:" makes ffmpeg take the rest literally: no protocol, no option parsing.
    return "file:" + os.path.abspath(path)


def last_line(data: bytes, path: Path) -> str:
    """ffmpeg's last error line, without the `file:PATH: ` prefix it repeats."""
    lines = [line for line in data.decode(errors="replace").splitlines() if line.strip()]
    line = lines[-1].strip() if lines else "no message"
    return line.replace(ffmpeg_input(path) + ": ", "")


# What ffmpeg's (and the C library's) terse endings mean for the user's file.
# ffprobe says "Invalid argument" of a file whose name promises a format its
# bytes do not hold (a text file called .mp3).
IN_WORDS = {
    "Invalid data found when processing input": "its bytes are in no audio format ffmpeg knows",
    "Invalid argument": "its bytes are in no audio format ffmpeg knows",
    "End of file": "it ends before any audio",
    "No such file or directory": "the file is gone",
    "Permission denied": "stemd is not allowed to read it",
    "Input/output error": "its disk or share failed to read it (an I/O error)",
}


def failure_in_words(failure: str, stderr: bytes, path: Path) -> str:
    """`failure: what it means` for a message ffmpeg ends with that has a plain
    meaning, else `failure (ffmpeg's own last line)`."""
    line = last_line(stderr, path)
    for ending, words in IN_WORDS.items():
        if line.endswith(ending):
            return f"{failure}: {words}"
    return f"{failure} ({line})"


@contextlib.contextmanager
def running(
    command: list[str], stdin: int | None, stdout: int | None, stderr: IO[bytes]
) -> Iterator[subprocess.Popen[bytes]]:
    """A registered child; killed and reaped if it is still running at the end."""
    try:
        child = subprocess.Popen(
            command, stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True
        )
    except FileNotFoundError:
        raise StemdError(
            f"{command[0]} is not installed; install ffmpeg (e.g. apt-get install ffmpeg)"
        ) from None
    with _children_lock:
        _children.add(child)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
            _reap(child, REAP_TIMEOUT_S)
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        with _children_lock:
            _children.discard(child)


def _check(
    command: list[str], deadline: float, timeout: float, cancelled: CancelCheck | None
) -> None:
    if cancelled is not None and cancelled():
        raise JobCancelled(f"{command[0]} killed: the job was cancelled")
    if time.monotonic() > deadline:
        raise subprocess.TimeoutExpired(command, timeout)


def run(
    command: list[str],
    timeout: float,
    cancelled: CancelCheck | None = None,
    feed: Iterable[bytes] | None = None,
    consume: Callable[[bytes], None] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a child to completion, killing it on time-out (TimeoutExpired) or when
    `cancelled` turns true (JobCancelled).

    `feed`: blocks written to its stdin from a thread of ours (encoders), else
    stdin is /dev/null. `consume`: called with each block of its stdout as it
    comes (streamed decoding), else stdout is collected and returned. stderr is
    collected into a file, so a chatty child never blocks on a full pipe.
    """
    if cancelled is not None and cancelled():
        raise JobCancelled(f"{command[0]} not started: the job was cancelled")
    deadline = time.monotonic() + timeout
    collected = bytearray()
    with tempfile.TemporaryFile() as errors:
        with running(
            command,
            subprocess.PIPE if feed is not None else subprocess.DEVNULL,
            subprocess.PIPE if feed is None else subprocess.DEVNULL,
            errors,
        ) as child:
            feeder = None
            feed_errors: list[BaseException] = []
            if feed is not None:
                feeder = threading.Thread(
                    target=_feed, args=(child, feed, feed_errors), daemon=True
                )
                feeder.start()
            try:
                if child.stdout is not None:
                    _read_all(
                        child, command, deadline, timeout, cancelled, consume or collected.extend
                    )
                while True:
                    try:
                        child.wait(CANCEL_POLL_S)
                        break
                    except subprocess.TimeoutExpired:
                        _check(command, deadline, timeout, cancelled)
            finally:
                if child.poll() is None:
                    child.kill()
                    _reap(child, REAP_TIMEOUT_S)
                if feeder is not None:
                    feeder.join(REAP_TIMEOUT_S)  # ends once the child is gone: writes fail
        if feed_errors:  # what we fed it was cut short: its output is not whole
            raise feed_errors[0]
        errors.seek(0)
        err = errors.read()
    return subprocess.CompletedProcess(command, child.returncode, bytes(collected), err)


def _read_all(
    child: subprocess.Popen[bytes],
    command: list[str],
    deadline: float,
    timeout: float,
    cancelled: CancelCheck | None,
    consume: Callable[[bytes], None],
) -> None:
    """Hand each block of the child's stdout to `consume` until it closes,
    checking for cancellation and the deadline between blocks."""
    assert child.stdout is not None
    fd = child.stdout.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            if selector.select(CANCEL_POLL_S):
                data = os.read(fd, READ_BYTES)
                if not data:
                    return
                consume(data)
            _check(command, deadline, timeout, cancelled)


def _feed(
    child: subprocess.Popen[bytes], blocks: Iterable[bytes], errors: list[BaseException]
) -> None:
    """Write `blocks` to the child's stdin, then close it. A failure to produce a
    block is recorded for the caller; the child is killed so it writes no more."""
    assert child.stdin is not None
    try:
        for block in blocks:
            child.stdin.write(block)
    except (BrokenPipeError, ValueError):
        return  # the child exited or was killed: its exit status tells
    except OSError as err:
        if isinstance(err, BrokenPipeError) or child.poll() is not None:
            return
        errors.append(err)
        child.kill()
        return
    except BaseException as err:  # reading the stem failed: the output is not whole
        errors.append(err)
        child.kill()
        return
    with contextlib.suppress(OSError, ValueError):
        child.stdin.close()


def run_on_input(
    command: list[str],
    timeout: float,
    path: Path,
    failure: str,
    cancelled: CancelCheck | None = None,
    consume: Callable[[bytes], None] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ffmpeg/ffprobe on an input; a failure or time-out is the input's fault."""
    try:
        result = run(command, timeout, cancelled, consume=consume)
    except subprocess.TimeoutExpired:
        raise InputError(path, f"{command[0]} took over {timeout:.0f}s on it") from None
    if result.returncode != 0:
        raise InputError(path, failure_in_words(failure, result.stderr, path))
    return result
