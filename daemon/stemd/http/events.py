"""Job events for the HTTP side: the log's STEMD_EVENT records, fanned out.

The worker already says everything that happens to a job as a structured log
event (detected, started, done, failed, retried, duplicate, ignored). The hub is
a logging handler on stemd's logger: each such record becomes a small dict,
handed synchronously to listeners (metrics) and queued for every open
`/api/v1/events` stream on that stream's event loop. A stream that falls behind
loses events rather than memory, and is told so (`resync`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from stemd.logs import LOGGER_NAME, Item, event_item

QUEUE_SIZE = 256
CLOSED: Item = {"event": "closed"}  # the server is stopping: end the stream


class Subscription:
    """One stream's queue, on the event loop that reads it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Item] = asyncio.Queue(QUEUE_SIZE)
        self.overflowed = False

    def offer(self, item: Item) -> None:
        """From any thread."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody reads
            self.loop.call_soon_threadsafe(self._put, item)

    def _put(self, item: Item) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True


class EventHub(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self._lock = threading.Lock()
        self._subscriptions: set[Subscription] = set()
        self._listeners: list[Callable[[Item], None]] = []
        self.closed = False

    # -- wiring ---------------------------------------------------------------

    def attach(self) -> None:
        logging.getLogger(LOGGER_NAME).addHandler(self)

    def detach(self) -> None:
        logging.getLogger(LOGGER_NAME).removeHandler(self)

    def listen(self, listener: Callable[[Item], None]) -> None:
        """`listener(item)` on the logging thread for every event (keep it quick)."""
        self._listeners.append(listener)

    def subscribe(self) -> Subscription:
        subscription = Subscription(asyncio.get_running_loop())
        with self._lock:
            self._subscriptions.add(subscription)
            if self.closed:
                subscription.offer(CLOSED)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(subscription)

    def close(self) -> None:
        """End every stream (the server stops: they would hold its shutdown)."""
        with self._lock:
            self.closed = True
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.offer(CLOSED)

    # -- logging.Handler ---------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        item = event_item(record)
        if item is not None:
            self.publish(item)

    def publish(self, item: Item) -> None:
        for listener in self._listeners:
            try:
                listener(item)
            except Exception:  # a listener's fault must not break logging
                self.handleError(logging.makeLogRecord({"msg": f"event listener failed: {item}"}))
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.offer(item)
