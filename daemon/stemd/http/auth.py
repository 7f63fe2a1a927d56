"""The access token: read from http.token_file, checked on every request.

A request carries it as `Authorization: Bearer TOKEN`, or as HTTP Basic with the
token as the password (any user name), which is what browsers and `curl -u`
send. Without a token_file (loopback only, the config check ensures) every
request is let in.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
import stat
from pathlib import Path

from stemd.errors import ConfigError

TOKEN_BYTES = 32
OPEN_PATHS = frozenset({"/ping"})  # container health checks carry no credentials


def read_token(path: Path, source: str = "config") -> str:
    """The token in `path` (its first line), or a ConfigError naming the key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError.single(
            source,
            "http.token_file",
            f"{path} does not exist; create it with `stemd token new {path}`",
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError.single(source, "http.token_file", f"cannot read {path}: {err}") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(token) < 16:
        raise ConfigError.single(
            source,
            "http.token_file",
            f"{path} holds no token of at least 16 characters; "
            f"create one with `stemd token new {path}`",
        )
    return token


def new_token_file(path: Path) -> str:
    """Write a fresh random token to `path`, readable by its owner only (0600)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    try:
        os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)  # an existing file keeps its mode otherwise
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    return token


def presented_token(authorization: str | None) -> str | None:
    """The token an Authorization header carries (Bearer, or Basic's password)."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _user, sep, password = decoded.partition(":")
        return password if sep else None
    return None


def authorized(expected: str | None, authorization: str | None) -> bool:
    if expected is None:
        return True
    given = presented_token(authorization)
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
