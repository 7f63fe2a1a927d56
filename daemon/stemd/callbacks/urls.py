"""Which URLs stemd will call back: the one rule, for the API, /predict and the
config's rules alike, and the same rule again for every address a send connects to.

A callback URL is the caller's, not the operator's: whoever may submit a job
could otherwise make stemd POST to a cloud's metadata service (169.254.169.254,
fd00:ec2::254) or to link-local devices. So a URL must be http(s) with a host,
and no address it names or resolves to may be link-local or a metadata address,
written however an address can be written: IPv4 inside IPv6 (mapped
`[::ffff:169.254.169.254]`, 6to4, NAT64 `[64:ff9b::a9fe:a9fe]`, IPv4-compatible
`[::a9fe:a9fe]`, Teredo), the old numeric forms `inet_aton` still reads
(`http://2852039166/`, `0xa9.0xfe.0xa9.0xfe`). A name is resolved at submission
and again at each send (`vetted_addresses`), and the connection goes to the
address that was checked, not to a fresh lookup: DNS that changes between the
check and the send (rebinding) cannot slip a forbidden address in.

Loopback and private addresses are allowed: a receiver on the same machine or
LAN is the common case for a self-hosted daemon.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import SplitResult, urlsplit

from stemd.masking import masked_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# getaddrinfo's shape: (family, type, proto, canonname, sockaddr)
AddrInfo = tuple[int, int, int, str, tuple[object, ...]]
Resolver = Callable[[str, int], Sequence[AddrInfo]]

MAX_URL_LENGTH = 2048
# cloud metadata services outside 169.254.0.0/16: AWS's IPv6 one, Alibaba's
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
)
NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class CallbackRefused(ValueError):
    """A callback URL stemd will not call; str() says why, without the URL's secrets."""


def system_resolve(host: str, port: int) -> Sequence[AddrInfo]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, which a packet to it may reach:
    IPv4-mapped (::ffff:0:0/96), 6to4 (2002::/16), NAT64 (64:ff9b::/96, and the
    local-use 64:ff9b:1::/48 with the address in the last 32 bits, as a /96 puts
    it), IPv4-compatible (::/96, but not :: and ::1), Teredo (2001::/32: its
    server, and the client, whose bits are inverted)."""
    last = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address in NAT64_PREFIXES[0] or address in NAT64_PREFIXES[1]:
        found.append(last)
    if address in IPV4_COMPATIBLE and int(address) > 1:
        found.append(last)
    if address.teredo is not None:
        server, client = address.teredo
        found += [client, server]
    return found


def forbidden(address: IPAddress) -> str | None:
    """Why stemd will not send to this address, or None."""
    if isinstance(address, ipaddress.IPv6Address):
        for embedded in embedded_ipv4(address):
            why = forbidden(embedded)
            if why:
                return f"{address} is {embedded}, and {why}"
    if address in METADATA_ADDRESSES:
        return f"{address} is a cloud metadata address"
    if address.is_link_local:
        network = "169.254.0.0/16" if address.version == 4 else "fe80::/10"
        return f"{address} is link-local ({network}), where metadata services live"
    if address.is_multicast or address.is_unspecified:
        return f"{address} is not an address a receiver has"
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address a host names by itself (no DNS): an IP literal, or an IPv4
    number in a form inet_aton reads (`2852039166`, `0xa9fea9fe`, `169.254.43518`)."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # fe80::1%eth0 is fe80::1
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def _parts(url: str) -> SplitResult:
    if not isinstance(url, str) or not url.strip():
        raise CallbackRefused("it is empty; give an http:// or https:// URL")
    if len(url) > MAX_URL_LENGTH:
        raise CallbackRefused(f"it is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise CallbackRefused("it holds spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as err:
        raise CallbackRefused(f"it is not a URL ({err})") from None
    if parts.scheme.lower() not in ("http", "https"):
        scheme = f"{parts.scheme}://" if parts.scheme else "a URL without a scheme"
        raise CallbackRefused(f"only http:// and https:// URLs are called back, not {scheme}")
    if not parts.hostname:
        raise CallbackRefused("it has no host; e.g. https://example.com/stemd-done")
    return parts


def default_port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme.lower() == "https" else 80)


def check_callback_url(url: str, resolve: Resolver | None = system_resolve) -> str:
    """The URL, if stemd may call it back; else CallbackRefused saying why.

    `resolve` (getaddrinfo's shape) looks a host name up: every address it gives
    must be allowed, and a name that does not resolve is refused (the API asks
    for a URL it can call now). With `resolve=None` (the config's rules: a config
    loads without DNS) names are not looked up; each send checks them anyway."""
    parts = _parts(url)
    host = parts.hostname
    assert host is not None
    address = literal_address(host)
    if address is not None:
        why = forbidden(address)
        if why:
            raise CallbackRefused(why)
        return url
    if resolve is None:
        return url
    for address in _addresses(host, default_port(parts), resolve):
        why = forbidden(address)
        if why:
            raise CallbackRefused(f"{host} resolves to {why}")
    return url


def _addresses(host: str, port: int, resolve: Resolver) -> list[IPAddress]:
    try:
        found = resolve(host, port)
    except (OSError, UnicodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise CallbackRefused(f"{host} does not resolve ({reason})") from None
    addresses = []
    for _family, _type, _proto, _name, sockaddr in found:
        try:
            addresses.append(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
        except ValueError:
            continue
    if not addresses:
        raise CallbackRefused(f"{host} resolves to no address")
    return addresses


def vetted_addresses(
    host: str, port: int, resolve: Resolver = system_resolve
) -> list[tuple[int, tuple[object, ...]]]:
    """At send time: (family, sockaddr) to connect to for `host`, each checked;
    CallbackRefused when any address the name gives now is forbidden (a name
    that resolves partly to metadata is not trusted for the rest)."""
    address = literal_address(host)
    if address is not None:
        why = forbidden(address)
        if why:
            raise CallbackRefused(why)
        kind = int(socket.AF_INET6 if address.version == 6 else socket.AF_INET)
        return [(kind, (str(address), port))]
    try:
        found = resolve(host, port)
    except (OSError, UnicodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise CallbackRefused(f"{host} does not resolve ({reason})") from None
    vetted: list[tuple[int, tuple[object, ...]]] = []
    for family, _type, _proto, _name, sockaddr in found:
        try:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        except ValueError:
            continue
        why = forbidden(address)
        if why:
            raise CallbackRefused(f"{host} resolves to {why}")
        vetted.append((family, sockaddr))
    if not vetted:
        raise CallbackRefused(f"{host} resolves to no address")
    return vetted


def refusal(key: str, url: str, err: CallbackRefused) -> str:
    """The message for a refused URL: the key, the URL masked, and why."""
    return f"{key} {masked_url(url)}: {err}"
