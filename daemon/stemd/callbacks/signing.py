"""Callbacks signed as webhook senders commonly sign (Stripe, Slack, GitHub's
style): `X-Stemd-Timestamp: <unix seconds>` and
`X-Stemd-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`, keyed
with the secret in http.callback_secret_file. The timestamp is inside the
signed text, so a receiver that refuses old timestamps refuses replays.

The secret file: read as a token file is (surrounding whitespace stripped); a
missing one is made on the daemon's first start (`ensure_secret`, mode 0600,
never over an existing file), so callbacks are always signed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path

from stemd.errors import ConfigError, ConfigIssue

TIMESTAMP_HEADER = "X-Stemd-Timestamp"
SIGNATURE_HEADER = "X-Stemd-Signature"
SECRET_KEY = "http.callback_secret_file"
DEFAULT_SECRET_NAME = "callback-secret"  # in state_dir, when the key is not set
SECRET_BYTES = 32
MIN_SECRET_CHARS = 16


def signature(body: bytes, secret: bytes, timestamp: int) -> str:
    """`sha256=<hex>` of "<timestamp>.<body>"."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def signed_headers(body: bytes, secret: bytes, now: float | None = None) -> dict[str, str]:
    """The two headers for one try (each try is signed afresh: its own timestamp)."""
    timestamp = int(time.time() if now is None else now)
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(body, secret, timestamp),
    }


def verify(
    body: bytes,
    timestamp: str,
    signed: str,
    secret: bytes,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """What a receiver does (the README's snippet, as a function): the signature
    matches, compared in constant time, and the timestamp is recent. False, never
    an exception, for any malformed header: a timestamp is 1 to 12 ASCII digits
    (str.isdigit takes '²', which int() refuses, and other scripts' digits), and
    the signatures are compared as bytes (compare_digest raises on non-ASCII str)."""
    if not isinstance(timestamp, str) or not isinstance(signed, str):
        return False
    if re.fullmatch(r"[0-9]{1,12}", timestamp) is None:
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False
    expected = signature(body, secret, int(timestamp)).encode()
    return hmac.compare_digest(expected, signed.encode("utf-8", "surrogateescape"))


def secret_path(configured: Path | None, state_dir: Path) -> Path:
    """http.callback_secret_file, or `state_dir/callback-secret` when it is not set."""
    return configured if configured is not None else state_dir / DEFAULT_SECRET_NAME


def read_secret(path: Path, source: str = "config") -> bytes:
    """The secret (whitespace around it stripped); ConfigError naming the key if
    the file cannot be read or holds too little to be a secret."""
    try:
        text = path.read_bytes().strip()
    except OSError as err:
        raise ConfigError(
            [ConfigIssue(source, SECRET_KEY, f"cannot read {path} ({err.strerror})")]
        ) from None
    if len(text) < MIN_SECRET_CHARS:
        raise ConfigError(
            [
                ConfigIssue(
                    source,
                    SECRET_KEY,
                    f"{path} holds {len(text)} characters; a callback secret needs at least "
                    f"{MIN_SECRET_CHARS} (remove the file and stemd makes one on its next start)",
                )
            ]
        )
    return text


def ensure_secret(path: Path, source: str = "config") -> tuple[bytes, bool]:
    """The secret in `path`, made first if there is no file (64 hex digits, mode
    0600, created exclusively: a file another start made meanwhile is read, never
    replaced). Returns (secret, whether it was made now)."""
    made = False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    except OSError as err:
        raise ConfigError(
            [
                ConfigIssue(
                    source,
                    SECRET_KEY,
                    f"there is no {path} and it cannot be made ({err.strerror}); write a "
                    "secret there (e.g. `openssl rand -hex 32`), readable by stemd alone",
                )
            ]
        ) from None
    else:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(SECRET_BYTES) + "\n")
            file.flush()
            os.fsync(file.fileno())
        made = True
    return read_secret(path, source), made
