"""Can the model hub be reached? Asked once, within a few seconds.

Without this, a machine with no internet met huggingface_hub's retries (about
25 s, five "Retrying in Ns" lines) and then demucs' fallback download before it
learnt anything. A TCP connection to the hub (or to the proxy the environment
names) answers the same question in milliseconds, or in PROBE_TIMEOUT_S at worst.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import urllib.request
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT


def proxy_for(url: str) -> str | None:
    """The proxy a request to `url` goes through, as the environment says: the
    scheme's `*_proxy` or `all_proxy`, unless `no_proxy`/`NO_PROXY` exempts the host
    (by name or domain suffix, as urllib reads it, or by an address range such as
    `10.0.0.0/8`, as httpx reads it too)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if parts.hostname and _exempt(parts.hostname, proxies.get("no", "")):
        return None
    value = proxies.get(parts.scheme) or proxies.get("all")
    if not value:
        return None
    return value if "://" in value else f"http://{value}"


def _exempt(host: str, no_proxy: str) -> bool:
    # proxy_bypass is urllib's reading of no_proxy on Linux (proxy_bypass_environment)
    if urllib.request.proxy_bypass(host):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    for entry in no_proxy.split(","):
        try:
            if address in ipaddress.ip_network(entry.strip(), strict=False):
                return True
        except ValueError:
            continue  # a host name, not a range
    return False


def unreachable_reason(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if a connection to the hub (or its proxy) opens; else why not.
    huggingface_hub's own offline switch counts as unreachable: no request."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    target = urlsplit(proxy_for(hub_endpoint()) or hub_endpoint())
    host = target.hostname
    if not host:
        return f"HF_ENDPOINT {hub_endpoint()!r} names no host"
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as err:
        return f"cannot resolve {host} ({err.strerror})"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout:g}s"
    except OSError as err:
        return f"{host}:{port}: {err.strerror or err}"
