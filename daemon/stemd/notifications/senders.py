"""One delivery of one message to one target, within a timeout.

A sender raises NotDelivered with a reason that holds nothing secret (the URL's
parts are scrubbed out of library messages). Apprise logs the whole URL, token
and all, at debug level: its logger is kept out of stemd's log, and only what
it warns about is kept, scrubbed, as the reason.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from typing import Any, Protocol

from stemd import __version__
from stemd.masking import masked_url, scrub
from stemd.notifications.messages import Message


class NotDelivered(Exception):
    """The target did not take the message; str() is safe to log."""


class Sender(Protocol):
    @property
    def name(self) -> str: ...  # the target as logs show it: nothing secret

    def send(self, message: Message) -> None: ...


class WebhookSender:
    """A JSON POST of the message's payload; any 2xx answer is delivery."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.name = f"webhook {masked_url(url)}"

    def send(self, message: Message) -> None:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(message.payload).encode(),
            headers={"Content-Type": "application/json", "User-Agent": f"stemd/{__version__}"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                answer.read(64 * 1024)
        except urllib.error.HTTPError as err:
            raise NotDelivered(f"answered HTTP {err.code}") from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, TimeoutError):
                raise NotDelivered(f"no answer within {self.timeout:g}s") from None
            strerror = getattr(reason, "strerror", None)  # "Connection refused": no URL in it
            raise NotDelivered(strerror or scrub(str(reason), self.url)) from None
        except TimeoutError:
            raise NotDelivered(f"no answer within {self.timeout:g}s") from None
        except OSError as err:
            raise NotDelivered(err.strerror or scrub(str(err), self.url)) from None


class _AppriseWarnings(logging.Handler):
    """What Apprise warned about, per thread (each channel sends on its own)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self._last = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        self._last.message = record.getMessage()

    def take(self) -> str | None:
        message: str | None = getattr(self._last, "message", None)
        self._last.message = None
        return message


_warnings = _AppriseWarnings()
_quieted = threading.Lock()


def _quiet_apprise() -> None:
    """Apprise's records stay out of stemd's log (they name whole URLs)."""
    with _quieted:
        logger = logging.getLogger("apprise")
        if _warnings not in logger.handlers:
            logger.addHandler(_warnings)
            logger.propagate = False
            logger.setLevel(logging.WARNING)


class AppriseSender:
    """One Apprise URL (ntfy://, gotify://, discord://, json://, mailto:// ...)."""

    def __init__(self, url: str, timeout: float, where: str = "apprise") -> None:
        import apprise

        _quiet_apprise()
        self.url = url
        self.name = f"{where} {masked_url(url)}"
        plugin: Any = apprise.Apprise.instantiate(url)
        if plugin is None:
            raise ValueError(f"{self.name}: not a URL Apprise knows")
        plugin.socket_connect_timeout = timeout
        plugin.socket_read_timeout = timeout
        self._plugin = plugin
        self._types = {
            "done": apprise.NotifyType.SUCCESS,
            "failed": apprise.NotifyType.FAILURE,
            "drained": apprise.NotifyType.INFO,
        }

    def send(self, message: Message) -> None:
        _warnings.take()
        try:
            ok = self._plugin.notify(
                body=message.body, title=message.title, notify_type=self._types[message.event]
            )
        except Exception as err:  # a plugin's own bug must not end the channel
            raise NotDelivered(scrub(f"{type(err).__name__}: {err}", self.url)) from None
        if not ok:
            said = _warnings.take()
            raise NotDelivered(scrub(said, self.url) if said else "not delivered")


def apprise_file_urls(path: str) -> list[str]:
    """The URLs in an apprise_file: one a line; blank lines and # comments skipped."""
    with open(path, encoding="utf-8") as file:
        lines = [line.strip() for line in file]
    return [line for line in lines if line and not line.startswith("#")]
