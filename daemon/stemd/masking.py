"""URLs with their secrets hidden, for logs and `stemd check`.

Notification URLs carry their credentials in every part: a password in the
user info, a token as the "host" (telegram://BOTTOKEN/...), in the path
(discord://ID/TOKEN, https://hooks.example/T0/B0/SECRET) or in the query. What
is shown: the scheme, the host when it is a real host name (it has a dot, or is
localhost or an address) and the port; every other part is ***.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

HIDDEN = "***"


def _real_host(host: str) -> bool:
    if host == "localhost" or ("." in host and not host.replace(".", "").isdigit()):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def masked_url(url: str) -> str:
    """`scheme://host:port/***` with nothing secret left in it."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return HIDDEN
    scheme = parts.scheme or "?"
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:  # not a port: a token in its place (tgram://ID:TOKEN/...)
        host, port = HIDDEN, None
    shown = host if host and _real_host(host) else (HIDDEN if host else "")
    if ":" in shown:  # an IPv6 address
        shown = f"[{shown}]"
    if port is not None and shown != HIDDEN:
        shown += f":{port}"
    user = f"{HIDDEN}@" if parts.username or parts.password else ""
    path = f"/{HIDDEN}" if parts.path.strip("/") else ""
    query = f"?{HIDDEN}" if parts.query else ""
    return f"{scheme}://{user}{shown}{path}{query}"


def scrub(text: str, url: str) -> str:
    """`text` (a library's error message) with every part of `url` that could be
    secret replaced by ***."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return HIDDEN
    secrets = [url, parts.netloc, parts.path, parts.query, parts.username, parts.password]
    secrets += parts.path.split("/") + parts.query.split("&")
    if parts.hostname and not _real_host(parts.hostname):
        secrets.append(parts.hostname)
    for secret in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return text
