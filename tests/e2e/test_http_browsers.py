"""What a web page the user happens to open may not do to stemd: read it under its own
host name (DNS rebinding), or change something with a cross-site request that the
browser sends with the Basic credentials it cached for stemd. A real daemon, a real
HTTP client sending the hostile headers a browser would."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from support.audio import make_mix
from support.daemon import Daemon, service_config, stemd
from support.http import EPHEMERAL, client, http_url, spool_files

EVIL = "https://evil.example"


def test_a_host_name_stemd_does_not_go_by_is_refused(tmp_path: Path) -> None:
    """Loopback and no token, as out of the box: a rebinding page's requests carry
    its own host name, and are refused; the machine's names and addresses work."""
    daemon = Daemon(service_config(tmp_path, http=EPHEMERAL), tmp_path).start()
    try:
        url = http_url(daemon)
        port = url.rsplit(":", 1)[1]
        with client(url) as http:
            for path in ("/api/v1/status", "/", "/ping"):
                rebound = http.get(path, headers={"Host": f"evil.example:{port}"})
                assert rebound.status_code == 400, path
                assert "http.allowed_hosts" in rebound.json()["detail"]
            for name in ("localhost", "127.0.0.1", socket.gethostname()):
                answer = http.get("/api/v1/status", headers={"Host": f"{name}:{port}"})
                assert answer.status_code == 200, name
            # behind a proxy: the name the browser used is checked too
            proxied = http.get("/ping", headers={"X-Forwarded-Host": "evil.example"})
            assert proxied.status_code == 400
        # no Host at all (HTTP/1.0 tools): no browser's request, answered
        with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as sock:
            sock.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.1 200")
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_configured_host_names_replace_the_defaults(tmp_path: Path) -> None:
    config = service_config(tmp_path, http={**EPHEMERAL, "allowed_hosts": ["stemd.lan"]})
    daemon = Daemon(config, tmp_path).start()
    try:
        with client(http_url(daemon)) as http:
            assert http.get("/ping", headers={"Host": "stemd.lan"}).status_code == 200
            assert http.get("/ping", headers={"Host": "STEMD.lan."}).status_code == 200
            assert http.get("/ping", headers={"Host": "localhost"}).status_code == 400
            assert http.get("/ping", headers={"Host": "[::1]:8750"}).status_code == 200
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_cross_site_changes_are_refused_even_with_the_browsers_credentials(
    tmp_path: Path,
) -> None:
    made = stemd("token", "new", str(tmp_path / "token"), cwd=tmp_path)
    token = made.stdout.strip()
    http = {
        **EPHEMERAL,
        "token_file": str(tmp_path / "token"),
        "allowed_hosts": ["stemd.example.com"],
    }
    config = service_config(tmp_path, http=http)
    daemon = Daemon(config, tmp_path).start()
    try:
        url = http_url(daemon)
        song = make_mix(tmp_path / "made" / "song.wav", 2.0)
        with httpx.Client(base_url=url, auth=("", token), timeout=60) as browser:
            before = browser.get("/api/v1/status").json()["counts"]

            def upload(**headers: str) -> httpx.Response:
                files = {"file": ("song.wav", song.read_bytes())}
                return browser.post("/api/v1/jobs", files=files, headers=headers)

            hostile = upload(Origin=EVIL)
            assert hostile.status_code == 403
            assert EVIL in hostile.json()["detail"]
            assert browser.post("/api/v1/jobs/1/retry", headers={"Origin": EVIL}).status_code == 403
            assert upload(Origin="null").status_code == 403  # a sandboxed frame, a file: page
            assert browser.get("/api/v1/status").json()["counts"] == before  # nothing queued
            assert spool_files(tmp_path) == []  # nothing spooled

            # reading stays open to the token (GET is not refused by its Origin)
            assert browser.get("/api/v1/status", headers={"Origin": EVIL}).status_code == 200
            # stemd's own page, and its page behind a reverse proxy that says so
            assert upload(Origin=url).status_code in (200, 202)
            proxied = upload(
                Origin="https://stemd.example.com", **{"X-Forwarded-Host": "stemd.example.com"}
            )
            assert proxied.status_code in (200, 202)
            assert upload().status_code in (200, 202)  # no Origin: curl, scripts
        assert daemon.stop() == 0
    finally:
        daemon.kill()
