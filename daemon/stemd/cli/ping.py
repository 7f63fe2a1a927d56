"""`stemd ping`: whether the running daemon answers `/ping` with 200 (the
watchdog's rule: the main loop moves, the workers live and move, the ledger is
reachable). For health checks: a container's HEALTHCHECK, a monitoring script."""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import sys

from stemd.cli.common import config_from
from stemd.config.sections import listen_address
from stemd.errors import EX_OK, EX_SOFTWARE, ConfigError

PING_TIMEOUT_S = 5.0


def ping_target(listen: str) -> tuple[str, int]:
    """Where to reach a server listening on `listen`: an unspecified address
    (0.0.0.0, ::) is reached on this machine's loopback."""
    host, port = listen_address(listen)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host, port
    if address.is_unspecified:
        return ("::1" if address.version == 6 else "127.0.0.1"), port
    return host, port


def cmd_ping(args: argparse.Namespace) -> int:
    config, _ = config_from(args)
    if config.http.listen is None:
        raise ConfigError.single(
            "config", "http.listen", "is null: the HTTP server is off, there is nothing to ping"
        )
    host, port = ping_target(config.http.listen)
    where = f"http://{f'[{host}]' if ':' in host else host}:{port}/ping"
    # straight to the daemon: no proxy the environment names applies to it
    connection = http.client.HTTPConnection(host, port, timeout=PING_TIMEOUT_S)
    try:
        connection.request("GET", "/ping")
        response = connection.getresponse()
        body = response.read().decode(errors="replace").strip()
    except OSError as err:
        print(f"stemd: no answer from {where}: {err}", file=sys.stderr)
        return EX_SOFTWARE
    finally:
        connection.close()
    if response.status != 200:
        print(f"stemd: {where} answered {response.status}: {body}", file=sys.stderr)
        return EX_SOFTWARE
    print(body or "ok")
    return EX_OK
