"""A target's own thread: its messages wait in a bounded queue and go out in
order; a failed delivery is tried again after 5 s, 10 s, 20 s ... up to 10 min,
with one log line per failed try. A target that is down or hangs holds up
nothing but its own queue: separation never waits for it."""

from __future__ import annotations

import logging
import queue
import threading
import time

from stemd.notifications.messages import Message, NotifyEvent
from stemd.notifications.senders import NotDelivered, Sender

log = logging.getLogger("stemd")

QUEUE_MAX = 100  # messages a target that does not answer may have waiting
RETRY_FIRST_S = 5.0
RETRY_MAX_S = 600.0
IDLE_WAIT_S = 1.0  # how often an idle channel looks up from its queue


class Channel:
    def __init__(
        self, sender: Sender, events: frozenset[NotifyEvent], retry_first: float = RETRY_FIRST_S
    ) -> None:
        self.sender = sender
        self.events = events
        self.retry_first = retry_first
        self.dropped = 0
        self.failing = False
        self._queue: queue.Queue[Message] = queue.Queue(maxsize=QUEUE_MAX)
        self._closing = threading.Event()  # send what is queued, then end
        self._deadline = float("inf")  # when closing gives up on the queue
        self._stop = threading.Event()  # end now
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)

    @property
    def name(self) -> str:
        return self.sender.name

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def offer(self, message: Message) -> None:
        """Queue the message if this target wants its event; never blocks."""
        if message.event not in self.events:
            return
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning(
                    "notifications: %s: %d messages are waiting for it; newer ones are "
                    "dropped until it answers",
                    self.name,
                    QUEUE_MAX,
                )

    def close(self, grace: float) -> None:
        """Send what is queued for up to `grace` seconds more (no retries), then
        end. Returns at once: join() waits."""
        self._deadline = time.monotonic() + grace
        self._closing.set()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` for the thread to end; False if it is still in a
        send (it ends by the sender's own timeout, and is a daemon thread)."""
        if time.monotonic() >= self._deadline:
            self._stop.set()
        self._thread.join(max(0.0, timeout))
        if self._thread.is_alive():
            self._stop.set()
        return not self._thread.is_alive()

    def _done_closing(self) -> bool:
        return self._closing.is_set() and (
            self._queue.empty() or time.monotonic() >= self._deadline
        )

    def _run(self) -> None:
        while not self._stop.is_set() and not self._done_closing():
            if self._closing.is_set() and self.failing:
                self._drop_queued()  # no last tries at a target that is down
                return
            try:
                message = self._queue.get(timeout=IDLE_WAIT_S)
            except queue.Empty:
                continue
            self._deliver(message)

    def _drop_queued(self) -> None:
        dropped = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            dropped += 1
        if dropped:
            log.warning(
                "notifications: %s: %d message(s) not sent (it is down)", self.name, dropped
            )

    def _deliver(self, message: Message) -> None:
        delay = self.retry_first
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sender.send(message)
            except NotDelivered as err:
                self.failing = True
                log.warning(
                    "notifications: %s: %s (after %.1fs); trying the %s message again in %gs",
                    self.name,
                    err,
                    time.monotonic() - started,
                    message.event,
                    delay,
                )
                if self._closing.is_set() or self._stop.wait(delay):
                    return  # no retries once closing: shutdown does not wait on it
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if self.failing:
                log.info("notifications: %s: delivered again", self.name)
            self.failing = False
            self.dropped = 0
            return
