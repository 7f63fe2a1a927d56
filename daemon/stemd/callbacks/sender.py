"""One callback POST within a timeout, to an address checked at send time.

The timeout is one deadline for the whole try: every address connected to,
TLS, the request, and the answer's status line each get what is left of it
(a socket's own timeout is per operation: a receiver dripping a byte every
few seconds, or a name with many addresses that do not answer, would
otherwise hold a sender for as long as it likes). Of the answer only the
status line is read; the headers and body are left unread and the connection
closed.

http.client, not urllib: no proxy from the environment (a proxy would reach
the address stemd refused), no redirects followed (a 3xx to a metadata address
would be one), and the socket connected to the address `vetted_addresses`
checked, never to a second lookup of the name (DNS rebinding). HTTPS verifies
the certificate against the URL's host name as usual.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from stemd import __version__
from stemd.callbacks.urls import (
    CallbackRefused,
    Resolver,
    default_port,
    system_resolve,
    vetted_addresses,
)
from stemd.masking import scrub

STATUS_LINE_MAX = 8 * 1024  # of the answer, only the status line is read


class NotDelivered(Exception):
    """The receiver did not take the callback; str() is safe to log. `final`:
    trying again cannot help (the URL is refused now)."""

    def __init__(self, reason: str, final: bool = False) -> None:
        super().__init__(reason)
        self.final = final


def _left(deadline: float) -> float:
    """Seconds left to the try's deadline; TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the try's time is up")
    return left


def _vetted_connect(
    host: str, port: int, resolve: Resolver, deadline: float
) -> Callable[..., socket.socket]:
    """A replacement for socket.create_connection that connects only to the
    addresses `host` has now, each checked (tried in the resolver's order), all
    of them within what is left of the try (not a timeout per address)."""

    def connect(
        _address: tuple[str, int], _timeout: float | None = None, _source: object = None
    ) -> socket.socket:
        last: OSError | None = None
        for family, sockaddr in vetted_addresses(host, port, resolve):
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(_left(deadline))
                sock.connect(sockaddr)
                # TLS's handshake, on this socket, is bounded by one timeout as a whole
                sock.settimeout(_left(deadline))
                return sock
            except OSError as err:
                sock.close()
                if isinstance(err, TimeoutError) and time.monotonic() >= deadline:
                    raise
                last = err
        assert last is not None  # vetted_addresses gives at least one
        raise last

    return connect


def _status(sock: socket.socket, deadline: float) -> int:
    """The status of the answer's status line, read within the deadline (each
    read given what is left: a receiver that drips bytes gains nothing); its
    headers and body are never read. An interim answer (`100 Continue`, which
    http.client skipped too) is passed over to the final one; all of it within
    STATUS_LINE_MAX bytes."""
    head = b""
    received = 0
    while True:
        if b"\n" in head:
            line = head.split(b"\n", 1)[0].rstrip(b"\r")
            matched = re.fullmatch(rb"HTTP/[0-9]\.[0-9] ([0-9]{3})(?:[ \t].*)?", line, re.DOTALL)
            if matched is None:
                raise NotDelivered("did not answer HTTP")
            status = int(matched.group(1))
            if not 100 <= status < 200:
                return status
            interim_end = re.search(rb"\r?\n\r?\n", head)
            if interim_end is not None:
                head = head[interim_end.end() :]
                continue
        if received > STATUS_LINE_MAX:
            raise NotDelivered(f"answered no final status within {STATUS_LINE_MAX} bytes")
        sock.settimeout(_left(deadline))
        chunk = sock.recv(STATUS_LINE_MAX)
        if not chunk:
            raise NotDelivered("closed the connection without an answer")
        head += chunk
        received += len(chunk)


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    resolve: Resolver = system_resolve,
) -> int:
    """POST `body` (JSON) to `url` within `timeout` seconds in all (resolving,
    connecting, TLS, sending, the answer's status line); the HTTP status of a 2xx
    answer, else NotDelivered (with `final` when the URL is refused at this send)."""
    deadline = time.monotonic() + timeout
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = default_port(parts)
    connection: http.client.HTTPConnection
    if parts.scheme.lower() == "https":
        connection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    # http.client calls self._create_connection for the TCP connection (TLS wraps it after)
    setattr(connection, "_create_connection", _vetted_connect(host, port, resolve, deadline))  # noqa: B010
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    try:
        connection.connect()
        assert connection.sock is not None
        connection.sock.settimeout(_left(deadline))  # the request is small: one send
        connection.request(
            "POST",
            target,
            body=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"stemd/{__version__}",
                "Connection": "close",
                **headers,
            },
        )
        status = _status(connection.sock, deadline)
    except CallbackRefused as err:
        raise NotDelivered(f"refused now: {err}", final=True) from None
    except TimeoutError:
        raise NotDelivered(f"no answer within {timeout:g}s") from None
    except ssl.SSLError as err:
        raise NotDelivered(f"TLS: {err.reason or err}") from None
    except (OSError, http.client.HTTPException) as err:
        reason = getattr(err, "strerror", None) or scrub(f"{type(err).__name__}: {err}", url)
        raise NotDelivered(reason) from None
    finally:
        connection.close()
    if not 200 <= status < 300:
        raise NotDelivered(f"answered HTTP {status}")
    return status
