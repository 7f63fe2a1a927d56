"""`Callbacks`, the owner: finds the callbacks due in the ledger, posts them on
threads of its own, retries with backoff, and stops within a bound.

The ledger says what is due (stemd.ledger.callbacks): every input with a
callback URL whose job ended since it was last posted. The `stemd-callbacks`
thread looks when a job event says something ended (a logging handler wakes
it, without waiting) and every few seconds anyway (a job another host ended, an
input given a URL after its job ended); it claims each due callback in the
ledger (one host posts it), builds the job's JSON once, and queues it; once a
callback is delivered or given up, it marks it posted. Only this thread (and
`stop`) speaks to the ledger. Senders
(`stemd-callback-N`, a few, so one receiver that hangs holds one of them for a
timeout, not every callback) sign each try afresh and post it; a failed try is
one log line, and the callback waits on the owner's timer (5 s, 10 s, ... 10
min, 10 tries in all), holding no thread while it waits. No worker ever waits
for any of this.

At shutdown the senders get a few seconds for what is queued (no new tries);
what is left is released in the ledger, so the next start (or another host)
posts it. A send still under way then, or a crash, leaves the claim: this
node's next start posts it again (a receiver may then get that end twice). So
does a ledger that fails at stop (asked once, not once per callback) or that
the owner's thread is still waiting on (stop then leaves the ledger alone).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from stemd.callbacks.sender import NotDelivered, post
from stemd.callbacks.signing import signed_headers
from stemd.errors import StemdError
from stemd.jobview import job_json
from stemd.ledger import DueCallback, Ledger, LedgerUnavailable
from stemd.logs import LOGGER_NAME, event_item
from stemd.masking import masked_url, scrub

log = logging.getLogger("stemd")

SENDERS = 4  # callbacks posted at once (a hung receiver holds one for a timeout)
# claimed and not yet delivered or given up (queued, or waiting for a retry);
# more stay due in the ledger until there is room
OUTSTANDING_MAX = 100
SEND_TIMEOUT_S = 10.0  # a try's deadline: connect, TLS, send, the answer's status line
POLL_S = 5.0  # the ledger is asked this often even when no job event woke it
RETRY_FIRST_S = 5.0
RETRY_MAX_S = 600.0
TRIES = 10  # about 35 min from the first try to the last
STOP_GRACE_S = 5.0
WAKING_EVENTS = frozenset({"done", "failed", "duplicate"})


@dataclass
class _Delivery:
    due: DueCallback
    body: bytes
    tries: int = 0

    def name(self) -> str:
        return _name(self.due)


def _name(due: DueCallback) -> str:
    """How a log line names a callback (the URL masked)."""
    return f"callback for job {due.job_id} ({due.source}) to {masked_url(due.url)}"


def _what(err: Exception, url: str) -> str:
    """An unexpected exception in one line, without the URL's secrets."""
    return scrub(f"{type(err).__name__}: {err}", url)


class _EventTap(logging.Handler):
    """On the logging thread: a job's end wakes the owner, at once."""

    def __init__(self, owner: Callbacks) -> None:
        super().__init__(level=logging.INFO)
        self.owner = owner

    def emit(self, record: logging.LogRecord) -> None:
        item = event_item(record)
        if item is not None and item["event"] in WAKING_EVENTS:
            self.owner.wake()


class Callbacks:
    def __init__(
        self,
        ledger: Ledger,
        outbox: Path,
        secret: bytes,
        *,
        senders: int = SENDERS,
        timeout: float = SEND_TIMEOUT_S,
        poll: float = POLL_S,
        retry_first: float = RETRY_FIRST_S,
        tries: int = TRIES,
        node_gone: float = 60.0,
    ) -> None:
        """`node_gone`: seconds after which a host sharing the ledger that is not
        heard from is gone (the callbacks it claimed are posted here)."""
        self.ledger = ledger
        self.outbox = outbox
        self.secret = secret
        self.timeout = timeout
        self.poll = poll
        self.retry_first = retry_first
        self.tries = tries
        self.node_gone = node_gone
        self._queue: queue.Queue[_Delivery] = queue.Queue()  # bounded by OUTSTANDING_MAX
        self._later: list[tuple[float, int, _Delivery]] = []  # retries, by when they are due
        self._order = itertools.count()
        self._in_flight: set[int] = set()  # ids of the _Delivery objects being sent
        self._held: set[int] = set()  # input ids claimed here and not yet marked posted
        self._ended: list[_Delivery] = []  # delivered or given up: to mark posted
        self._lock = threading.Lock()  # _later, _in_flight, _held, _ended, _left
        self._left: list[_Delivery] = []  # not delivered once closing: released at stop
        self._woken = threading.Event()
        self._stop = threading.Event()  # no more claims; senders send what is queued
        self._deadline = float("inf")  # when senders give up on the queue
        self._tap = _EventTap(self)
        self._dispatcher = threading.Thread(target=self._run, name="stemd-callbacks", daemon=True)
        self._senders = [
            threading.Thread(target=self._send_loop, name=f"stemd-callback-{n}", daemon=True)
            for n in range(1, senders + 1)
        ]

    def start(self) -> None:
        logging.getLogger(LOGGER_NAME).addHandler(self._tap)
        self._dispatcher.start()
        for thread in self._senders:
            thread.start()

    def wake(self) -> None:
        """Look in the ledger now (a job ended, or an input got a URL); never waits."""
        self._woken.set()

    def reload(self, outbox: Path) -> None:
        self.outbox = outbox  # where the job JSON's stems are read from

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Claim what is due once more, give the senders `grace` seconds for the
        queue (no retries), join every thread, and release in the ledger what was
        not delivered (the next start posts it). A send still under way past the
        grace ends by its own timeout (a daemon thread) and is logged.

        Bounded: the ledger is asked at most once after it fails (one call may
        wait out a connect timeout; one per callback would be a hundred), and not
        at all while the owner's thread is still in it (its connection is not
        this thread's to share, and is closed after this). What is not released
        stays claimed by this node, and this node's own claims are due again
        after its next start (another host's, once this one is gone): late,
        never lost."""
        logging.getLogger(LOGGER_NAME).removeHandler(self._tap)
        self._deadline = time.monotonic() + grace
        self._stop.set()
        self._woken.set()
        self._dispatcher.join(grace + 1.0)
        for thread in self._senders:
            thread.join(max(0.0, self._deadline - time.monotonic()) + 0.5)
        with self._lock:
            hung = len(self._in_flight)
            held = len(self._held)
        if self._dispatcher.is_alive():
            log.warning(
                "callbacks: the ledger is still busy with the callbacks thread; %d callback(s) "
                "not marked in it stay claimed here: posted after the next start (again, "
                "for any delivered just now)",
                held,
            )
            return
        # what the senders finished after the dispatcher's last look
        reached = self._mark_ended()
        with self._lock:
            unmarked = len(self._ended)
            left = self._left + [item for _when, _n, item in self._later]
            self._left, self._later = [], []
        while True:
            try:
                left.append(self._queue.get_nowait())
            except queue.Empty:
                break
        released = 0
        for item in left if reached else []:
            try:
                self.ledger.release_callback(item.due)
            except LedgerUnavailable as err:
                log.error(
                    "callbacks: %d not delivered before stopping stay claimed here, the "
                    "ledger cannot be told (%s): posted after the next start",
                    len(left) - released,
                    err,
                )
                break
            released += 1
        if not reached and left:
            log.error(
                "callbacks: %d not delivered before stopping stay claimed here, the ledger "
                "cannot be told: posted after the next start",
                len(left),
            )
        if released:
            log.warning(
                "callbacks: %d not delivered before stopping; sent after the next start", released
            )
        if unmarked:
            log.warning(
                "callbacks: %d delivered or given up but not marked in the ledger: posted "
                "again after the next start",
                unmarked,
            )
        if hung:
            log.warning(
                "callbacks: %d send(s) still under way at shutdown, abandoned: posted again "
                "after the next start",
                hung,
            )

    # -- the owner's thread: what is due, claimed and queued ---------------------

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            try:
                self._mark_ended()
                self._requeue_due()
                if not stopping or self._deadline > time.monotonic():
                    self._claim_due()
            except Exception as err:  # a bug must not end callbacks for good: look again
                log.error(
                    "callbacks: looking for due callbacks failed (%s); looking again in %gs",
                    f"{type(err).__name__}: {err}",
                    self.poll,
                )
            if stopping:
                return
            self._woken.wait(self._next_wait())
            self._woken.clear()

    def _next_wait(self) -> float:
        with self._lock:
            first = self._later[0][0] if self._later else float("inf")
        return max(0.05, min(self.poll, first - time.monotonic()))

    def _requeue_due(self) -> None:
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._later or self._later[0][0] > now:
                    return
                _when, _n, item = heapq.heappop(self._later)
            self._queue.put_nowait(item)

    def _mark_ended(self) -> bool:
        """Delivered or given up: posted, in the ledger (an unreachable one is
        asked again at the next look; until then the input stays held here).
        False when the ledger could not be reached."""
        with self._lock:
            ended, self._ended = self._ended, []
        for position, item in enumerate(ended):
            try:
                self.ledger.finish_callback(item.due)
            except LedgerUnavailable:
                with self._lock:
                    self._ended += ended[position:]
                return False
            with self._lock:
                self._held.discard(item.due.input_id)
        return True

    def _claim_due(self) -> None:
        with self._lock:
            held = len(self._held)
        room = OUTSTANDING_MAX - held
        if room <= 0:
            return  # the rest stay due in the ledger
        try:
            # this node's own claims are among the due: those held here are skipped
            due = self.ledger.due_callbacks(limit=room + held, stale_after=self.node_gone)
        except LedgerUnavailable:
            return  # asked again at the next poll
        for callback in due:
            with self._lock:
                if callback.input_id in self._held:
                    continue
            try:
                if not self.ledger.claim_callback(callback, stale_after=self.node_gone):
                    continue  # another host posts it, or the job ended again meanwhile
                body = self._body(callback)
            except LedgerUnavailable:
                return
            except StemdError as err:  # the job is gone from the ledger: nothing to post
                log.error("callback for input %d: %s; given up", callback.input_id, err)
                with contextlib.suppress(LedgerUnavailable):
                    self.ledger.finish_callback(callback)
                continue
            except Exception as err:  # odd parameters, a bad manifest: it would fail each look
                log.error(
                    "%s (input %d): its body cannot be made (%s); given up",
                    _name(callback),
                    callback.input_id,
                    _what(err, callback.url),
                )
                with contextlib.suppress(LedgerUnavailable):
                    self.ledger.finish_callback(callback)
                continue
            with self._lock:
                self._held.add(callback.input_id)
            self._queue.put_nowait(_Delivery(callback, body))

    def _body(self, callback: DueCallback) -> bytes:
        job = self.ledger.get_job(callback.job_id)
        return json.dumps(job_json(job, self.ledger, self.outbox)).encode()

    # -- the senders -------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            if self._stop.is_set() and (
                time.monotonic() >= self._deadline
                or (self._queue.empty() and not self._dispatcher.is_alive())
            ):
                return  # what is left is released by stop()
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self._send(item)

    def _send(self, item: _Delivery) -> None:
        with self._lock:
            self._in_flight.add(id(item))
        item.tries += 1
        started = time.monotonic()
        try:
            status = post(
                item.due.url, item.body, signed_headers(item.body, self.secret), self.timeout
            )
        except NotDelivered as err:
            self._failed(item, err, time.monotonic() - started)
        except Exception as err:  # a bug: this callback is given up, the sender lives on
            log.error(
                "%s: %s (try %d, %.1fs); given up",
                item.name(),
                _what(err, item.due.url),
                item.tries,
                time.monotonic() - started,
            )
            with self._lock:
                self._ended.append(item)
            self._woken.set()
        else:
            log.info(
                "%s: delivered (HTTP %d, try %d, %.1fs)",
                item.name(),
                status,
                item.tries,
                time.monotonic() - started,
            )
            with self._lock:
                self._ended.append(item)
            self._woken.set()  # marked posted by the owner's thread
        finally:
            with self._lock:
                self._in_flight.discard(id(item))

    def _failed(self, item: _Delivery, err: NotDelivered, took: float) -> None:
        if err.final or item.tries >= self.tries:
            log.error(
                "%s: %s (try %d of %d, %.1fs); given up",
                item.name(),
                err,
                item.tries,
                self.tries,
                took,
            )
            with self._lock:
                self._ended.append(item)
            self._woken.set()
            return
        if self._stop.is_set():
            log.warning(
                "%s: %s (try %d, %.1fs); stemd is stopping: posted after its next start",
                item.name(),
                err,
                item.tries,
                took,
            )
            with self._lock:
                self._left.append(item)
            return
        delay = min(self.retry_first * 2 ** (item.tries - 1), RETRY_MAX_S)
        log.warning(
            "%s: %s (try %d of %d, %.1fs); trying again in %gs",
            item.name(),
            err,
            item.tries,
            self.tries,
            took,
            delay,
        )
        with self._lock:
            heapq.heappush(self._later, (time.monotonic() + delay, next(self._order), item))
        self._woken.set()
