"""The notifications' owner: job events in, messages out, one summary a batch.

Workers already log every job's end as a structured event (stemd.logs). A
logging handler hands `done` and `failed` to this thread's bounded queue without
waiting; the thread looks the job up (its folder, stems, times), words the
message and offers it to each target's channel. After a job ends, it asks the
ledger whether the queue ran empty (nothing queued, running or waiting to be
hashed, no file settling here); the first daemon to ask after the last job
claims the batch and sends the one `drained` summary.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from stemd.config import Config, NotificationTarget
from stemd.ledger import Ledger, LedgerUnavailable
from stemd.logs import LOGGER_NAME, Item, event_item
from stemd.manifest import manifest_stems
from stemd.notifications.channels import Channel
from stemd.notifications.messages import Message, drained_message, job_message
from stemd.notifications.senders import (
    AppriseSender,
    Sender,
    WebhookSender,
    apprise_file_urls,
)

log = logging.getLogger("stemd")

EVENTS_MAX = 1000  # job events waiting to be worded; more are dropped (and counted)
DRAINED_POLL_S = 2.0  # after a job ended, the queue is looked at this often until empty
STOP_GRACE_S = 5.0  # at shutdown, queued messages get this long to go out
RELOAD_GRACE_S = 5.0  # the channels a reload replaced, as long


def senders_for(target: NotificationTarget) -> list[Sender]:
    """The senders one configured target stands for (an apprise_file: one a URL).
    Raises ValueError or OSError with a message naming the target."""
    timeout = target.timeout
    if target.webhook is not None:
        return [WebhookSender(target.webhook, timeout)]
    if target.apprise is not None:
        return [AppriseSender(target.apprise, timeout)]
    assert target.apprise_file is not None
    path = str(target.apprise_file)
    urls = apprise_file_urls(path)
    if not urls:
        raise ValueError(f"apprise_file {path}: no URLs in it; write them one a line")
    return [
        AppriseSender(url, timeout, where=f"apprise_file {path} #{n}")
        for n, url in enumerate(urls, 1)
    ]


def build_channels(config: Config) -> list[Channel]:
    """A channel per target; a target that cannot be set up is logged and left
    out (the others still work), never a reason not to separate."""
    channels: list[Channel] = []
    for i, target in enumerate(config.notifications):
        try:
            senders = senders_for(target)
        except (ValueError, OSError) as err:
            log.error("notifications[%d]: %s; this target is left out", i, err)
            continue
        channels += [Channel(sender, frozenset(target.on)) for sender in senders]
    return channels


class _EventTap(logging.Handler):
    """On the logging thread: a job's end, queued for the notifier, at once."""

    def __init__(self, notifications: Notifications) -> None:
        super().__init__(level=logging.INFO)
        self.owner = notifications

    def emit(self, record: logging.LogRecord) -> None:
        item = event_item(record)
        if item is not None and item["event"] in ("done", "failed"):
            self.owner.offer(item)


class Notifications:
    def __init__(self, config: Config, ledger: Ledger, settling: Callable[[], int]) -> None:
        """`settling`: how many files this daemon saw that are not registered yet
        (the queue is not empty while a file settles)."""
        self.ledger = ledger
        self.settling = settling
        self.outbox = config.outbox
        self.channels = build_channels(config)
        self._targets = config.notifications
        self._retired: list[Channel] = []  # replaced by a reload, still sending
        self._events: queue.Queue[Item] = queue.Queue(maxsize=EVENTS_MAX)
        self._dropped = 0  # events the full queue turned away (counted on the logging thread)
        self._dropped_said = 0
        self._dirty = False  # a job ended since the queue was last seen empty
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the channels, swapped on reload
        self._tap = _EventTap(self)
        self._thread = threading.Thread(target=self._run, name="notifications", daemon=True)

    def start(self) -> None:
        for channel in self.channels:
            channel.start()
        if self.channels:
            log.info(
                "notifications: %s",
                "; ".join(f"{c.name} on {','.join(sorted(c.events))}" for c in self.channels),
            )
        logging.getLogger(LOGGER_NAME).addHandler(self._tap)
        self._thread.start()

    def reload(self, config: Config) -> None:
        """New targets (a SIGHUP): the old channels send what they hold, briefly,
        on their own threads (joined at stop); the main loop does not wait."""
        self.outbox = config.outbox
        if config.notifications == self._targets:
            return
        fresh = build_channels(config)
        for channel in fresh:
            channel.start()
        with self._lock:
            old, self.channels, self._targets = self.channels, fresh, config.notifications
            self._retired = [c for c in self._retired if c.alive] + old
        for channel in old:
            channel.close(grace=RELOAD_GRACE_S)
        log.info("notifications: %d target(s) now", len(fresh))

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Word what is queued, look once more for an empty queue, give the
        channels `grace` seconds to send, and join every thread (a send still
        under way past that is left to its own timeout, and logged)."""
        logging.getLogger(LOGGER_NAME).removeHandler(self._tap)
        self._stop.set()
        self._thread.join(DRAINED_POLL_S + 30.0)
        deadline = time.monotonic() + grace
        with self._lock:
            channels = self.channels + self._retired
        for channel in channels:
            channel.close(grace)
        for channel in channels:
            if not channel.join(deadline - time.monotonic() + 0.5):
                log.warning(
                    "notifications: %s: a send still under way at shutdown, abandoned",
                    channel.name,
                )

    def offer(self, item: Item) -> None:
        """Called on the logging thread: must not wait."""
        if not self._targets:
            return
        try:
            self._events.put_nowait(item)
        except queue.Full:
            self._dropped += 1

    # -- the notifier's thread ------------------------------------------------

    def _run(self) -> None:
        if self._wants("drained"):
            # a first look sets the mark in a new ledger (history is no batch), or
            # sends the summary a daemon stopped before sending
            self._check_drained()
        while True:
            stopping = self._stop.is_set()
            try:
                item: Item | None = self._events.get(timeout=0 if stopping else DRAINED_POLL_S)
            except queue.Empty:
                item = None
            if self._dropped > self._dropped_said:
                log.warning(
                    "notifications: %d job event(s) not announced: more than %d waited",
                    self._dropped - self._dropped_said,
                    EVENTS_MAX,
                )
                self._dropped_said = self._dropped
            if item is not None:
                self._announce(item)
                self._dirty = True
                continue  # word every waiting event before looking at the queue
            if self._dirty and self._wants("drained"):
                self._check_drained()
            if stopping:
                return

    def _wants(self, event: str) -> bool:
        with self._lock:
            return any(event in channel.events for channel in self.channels)

    def _offer(self, message: Message) -> None:
        with self._lock:
            channels = list(self.channels)
        for channel in channels:
            channel.offer(message)

    def _announce(self, item: Item) -> None:
        event = item["event"]
        if not self._wants(event):
            return
        source = item.get("source") or "?"
        job = None
        error: str | None = None
        stems: dict[str, str] = {}
        if item.get("job") is not None:
            try:
                job = self.ledger.get_job(int(item["job"]))
            except LedgerUnavailable:
                job = None
        if event == "failed":
            message = str(item.get("message") or "")
            error = job.error if job is not None and job.error else message
            if error.startswith(f"{source}: "):
                error = error[len(source) + 2 :]
        elif job is not None and job.output_dir:
            # what a share user may have edited: only names it can be trusted with
            files = manifest_stems(self.outbox / job.output_dir, self.outbox) or {}
            stems = {name: f"{job.output_dir}/{path.name}" for name, path in files.items()}
        self._offer(
            job_message(
                event,
                source,
                job,
                error,
                stems,
                item.get("audio_seconds"),
                item.get("elapsed"),
            )
        )

    def _check_drained(self) -> None:
        if self.settling() > 0:
            return
        try:
            drained = self.ledger.claim_drained()
        except LedgerUnavailable:
            return  # asked again at the next poll
        if drained.busy:
            return
        self._dirty = False
        if drained.done + drained.failed > 0:
            self._offer(drained_message(drained))
