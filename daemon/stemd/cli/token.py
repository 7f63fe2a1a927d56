"""`stemd token new [PATH]`: a fresh access token for the HTTP server;
`stemd token show`: the one the config's http.token_file holds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stemd.cli.common import config_from
from stemd.errors import EX_OK, ConfigError


def cmd_token(args: argparse.Namespace) -> int:
    if args.token_command == "show":
        return show_token(args)
    return new_token(args)


def show_token(args: argparse.Namespace) -> int:
    from stemd.http.auth import read_token

    config, _ = config_from(args)
    path = config.http.token_file
    if path is None:
        raise ConfigError.single("config", "http.token_file", "not set: there is no token to show")
    print(read_token(path))
    return EX_OK


def new_token(args: argparse.Namespace) -> int:
    from stemd.http.auth import new_token_file, read_token

    path: Path | None = args.path
    if path is None:
        config, _ = config_from(args)
        path = config.http.token_file
        if path is None and args.if_missing:
            return EX_OK  # the config asks for no token: none is missing
        if path is None:
            raise ConfigError.single(
                "config",
                "http.token_file",
                "not set: give a PATH (`stemd token new /etc/stemd/token`) and set "
                "http.token_file to it",
            )
    if args.if_missing and path.exists():
        read_token(path)  # there, and a token: nothing to do (else say what is wrong)
        return EX_OK
    try:
        token = new_token_file(path)
    except OSError as err:
        raise ConfigError.single(
            "command line", "PATH", f"cannot write {path}: {err.strerror}"
        ) from None
    # The token alone on stdout (TOKEN=$(stemd token new PATH)); the rest on stderr.
    print(token)
    if args.if_missing:  # the config names it already (a container's first start)
        print(f"made an access token in {path} (mode 0600)", file=sys.stderr)
        return EX_OK
    print(
        f"stemd: wrote a new token to {path} (mode 0600). Set http.token_file to it and "
        "restart stemd; clients send it as `Authorization: Bearer TOKEN` or `curl -u :TOKEN`.",
        file=sys.stderr,
    )
    return EX_OK
