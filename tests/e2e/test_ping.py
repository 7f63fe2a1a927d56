"""`stemd ping` (a container's HEALTHCHECK), `stemd token show`, and stemd's
refusal to run as root inside its image: the commands as a user runs them,
against a real daemon listening on every address with a token."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from support.daemon import Daemon, service_config, stemd


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_ping_answers_for_a_daemon_on_every_address_and_fails_once_it_stopped(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"
    made = stemd("token", "new", str(token_file), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    port = free_port()
    config = service_config(
        tmp_path, http={"listen": f"0.0.0.0:{port}", "token_file": str(token_file)}
    )
    shown = stemd("-c", str(config), "token", "show", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.strip() == made.stdout.strip()

    daemon = Daemon(config, tmp_path).start()
    try:
        daemon.wait_ready()
        ping = stemd("-c", str(config), "ping", cwd=tmp_path)
        assert ping.returncode == 0, ping.stderr  # reached on 127.0.0.1, no token needed
    finally:
        assert daemon.stop() == 0
    ping = stemd("-c", str(config), "ping", cwd=tmp_path)
    assert ping.returncode == 1
    assert f"no answer from http://127.0.0.1:{port}/ping" in ping.stderr


def test_ping_without_http_says_there_is_nothing_to_ping(tmp_path: Path) -> None:
    config = service_config(tmp_path)  # http.listen: null
    ping = stemd("-c", str(config), "ping", cwd=tmp_path)
    assert ping.returncode == 78
    assert "http.listen" in ping.stderr and "nothing to ping" in ping.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is root's; CI runs as root")
def test_root_in_stemds_image_is_refused_unless_puid_0_says_so(tmp_path: Path) -> None:
    """The image's entrypoint drops to PUID:PGID; `stemd run` started as root
    another way (`docker exec`, a changed entrypoint) refuses in one line.
    (The tests run as root, as CI does.)"""
    config = service_config(tmp_path)
    refused = stemd("-c", str(config), "run", cwd=tmp_path, env={"STEMD_CONTAINER": "1"})
    assert refused.returncode == 78
    (line,) = refused.stderr.strip().splitlines()
    assert "will not run as root in its container" in line and "PUID=0" in line
    assert not (tmp_path / "state").exists()  # refused before anything was made


def test_a_token_is_made_only_when_missing(tmp_path: Path) -> None:
    """The image's first start: the token the config names, made once, kept after."""
    token_file = tmp_path / "config" / "token"
    token_file.parent.mkdir()
    config = service_config(tmp_path, http={"listen": None, "token_file": str(token_file)})
    made = stemd("-c", str(config), "token", "new", "--if-missing", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stderr.strip() == f"made an access token in {token_file} (mode 0600)"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text()
    again = stemd("-c", str(config), "token", "new", "--if-missing", cwd=tmp_path)
    assert again.returncode == 0 and again.stderr == "" and again.stdout == ""
    assert token_file.read_text() == token
    token_file.write_text("short\n")  # a broken one is said, not replaced
    broken = stemd("-c", str(config), "token", "new", "--if-missing", cwd=tmp_path)
    assert broken.returncode == 78 and "no token of at least 16 characters" in broken.stderr
    none = service_config(tmp_path, http={"listen": None, "token_file": None})
    nothing = stemd("-c", str(none), "token", "new", "--if-missing", cwd=tmp_path)
    assert nothing.returncode == 0 and nothing.stderr == ""
