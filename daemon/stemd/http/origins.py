"""Which requests a browser may make of stemd: the Host it is asked by, and the Origin
of a request that changes something.

Two attacks from a web page the user happens to open, while stemd listens on the LAN
or on loopback without a token:
- DNS rebinding: the page's own host name is made to resolve to stemd's address, so
  the browser sends stemd requests (and lets the page read the answers) under the
  attacker's name. Refused by the Host check: only configured names, or an address
  (a rebinding needs a name), are answered.
- Cross-site requests: a form on any site can POST a multipart upload, or
  `/jobs/N/retry`, with no preflight, and the browser adds the Basic credentials it
  cached for stemd. Refused by the Origin check: a request that is not GET, HEAD or
  OPTIONS and names an Origin other than the host it was sent to is refused. Clients
  that send no Origin (curl, scripts, the seed's clients) are not browsers' cross-site
  requests and pass.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers

ANY = "*"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WILDCARD_LISTEN = frozenset({"", "0.0.0.0", "::"})


def machine_names() -> set[str]:
    """This machine's names: its host name, the fully qualified one, its mDNS name."""
    names = {"localhost", "localhost.localdomain"}
    for name in (socket.gethostname(), socket.getfqdn()):
        if name:
            names.add(name)
            short = name.split(".", 1)[0]
            names.update({short, f"{short}.local"})
    return {name.lower().rstrip(".") for name in names}


def allowed_hosts(configured: Iterable[str] | None, listen_host: str) -> frozenset[str] | None:
    """The host names answered (addresses always are); None when any name is (`*`).
    Default: the listen address's name, localhost and the machine's names."""
    if configured is not None:
        names = {name.lower().rstrip(".") for name in configured}
        return None if ANY in names else frozenset(names)
    names = machine_names()
    if listen_host not in WILDCARD_LISTEN:
        names.add(listen_host.lower().rstrip("."))
    return frozenset(names)


def _same_origin(origin: str, headers: Headers) -> bool:
    try:
        parts = urlsplit(origin)
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
    except ValueError:  # a port out of range, an unclosed bracket: no origin of ours
        return False
    name = (parts.hostname or "").lower().rstrip(".")
    if not name or parts.scheme not in ("http", "https"):
        return False  # "null" (a sandboxed frame, a file: page), or no web page's
    for value in (headers.get("host"), headers.get("x-forwarded-host")):
        if not value:
            continue
        target, target_port = split_host(value.split(",")[0])
        if target == name and (target_port or default) == port:
            return True
    return False


def split_host(value: str) -> tuple[str, int | None]:
    """`name:port`, `[v6]:port` or `name` -> (name, port)."""
    value = value.strip()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        name, _, port = value.partition(":") if value.count(":") == 1 else (value, "", "")
    return name.lower().rstrip("."), int(port) if port.isdigit() else None


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_refusal(headers: Headers, allowed: frozenset[str] | None) -> str | None:
    """Why the request's Host (or the X-Forwarded-Host a reverse proxy passes on, the
    name the browser used) is not answered, or None. No Host at all is no browser's
    request (HTTP/1.0 tools): answered."""
    if allowed is None:
        return None
    for header in ("host", "x-forwarded-host"):
        value = headers.get(header)
        if not value:
            continue
        name, _port = split_host(value.split(",")[0])
        if not (is_address(name) or name in allowed):
            return (
                f"the {'Host' if header == 'host' else 'X-Forwarded-Host'} {name!r} is not "
                f"among http.allowed_hosts ({', '.join(sorted(allowed))}): add the name you "
                "reach stemd by to http.allowed_hosts, or use its address"
            )
    return None


def origin_refusal(method: str, headers: Headers) -> str | None:
    """Why a state-changing request from a browser page of another site is refused,
    or None. Its Origin must be the host it was sent to, port included: the Host
    header, or the X-Forwarded-Host a reverse proxy sets (a name without a port there
    stands for the scheme's own: 80 or 443)."""
    if method.upper() in SAFE_METHODS:
        return None
    origin = headers.get("origin")
    if origin is None or _same_origin(origin, headers):
        return None
    return (
        f"a {method.upper()} from the page of another site ({origin}) is refused: "
        "stemd takes changes from its own page, or from clients that send no Origin"
    )
