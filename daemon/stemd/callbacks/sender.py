"""One callback POST within a timeout, to an address checked at send time.

http.client, not urllib: no proxy from the environment (a proxy would reach
the address stemd refused), no redirects followed (a 3xx to a metadata address
would be one), and the socket connected to the address `vetted_addresses`
checked, never to a second lookup of the name (DNS rebinding). HTTPS verifies
the certificate against the URL's host name as usual.
"""

from __future__ import annotations

import http.client
import socket
import ssl
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

ANSWER_READ_MAX = 64 * 1024  # of a receiver's answer body, read and dropped


class NotDelivered(Exception):
    """The receiver did not take the callback; str() is safe to log. `final`:
    trying again cannot help (the URL is refused now)."""

    def __init__(self, reason: str, final: bool = False) -> None:
        super().__init__(reason)
        self.final = final


def _vetted_connect(host: str, port: int, resolve: Resolver) -> Callable[..., socket.socket]:
    """A replacement for socket.create_connection that connects only to the
    addresses `host` has now, each checked (tried in the resolver's order)."""

    def connect(
        _address: tuple[str, int], timeout: float | None = None, source: object = None
    ) -> socket.socket:
        last: OSError | None = None
        for family, sockaddr in vetted_addresses(host, port, resolve):
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
                return sock
            except OSError as err:
                sock.close()
                last = err
        assert last is not None  # vetted_addresses gives at least one
        raise last

    return connect


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    resolve: Resolver = system_resolve,
) -> int:
    """POST `body` (JSON) to `url`; the HTTP status of a 2xx answer, else
    NotDelivered (with `final` when the URL is refused at this send)."""
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
    setattr(connection, "_create_connection", _vetted_connect(host, port, resolve))  # noqa: B010
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    try:
        connection.request(
            "POST",
            target,
            body=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"stemd/{__version__}",
                **headers,
            },
        )
        answer = connection.getresponse()
        answer.read(ANSWER_READ_MAX)
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
    if not 200 <= answer.status < 300:
        raise NotDelivered(f"answered HTTP {answer.status}")
    return answer.status
