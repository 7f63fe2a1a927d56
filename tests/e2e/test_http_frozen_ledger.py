"""A PostgreSQL server that hangs (SIGSTOP: it answers nothing, and no error comes)
holds the requests that need the ledger, never the HTTP server: /ping and the page
answer within a second while a /predict and more status polls than the thread pool
has threads wait on the frozen database."""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from pathlib import Path

import httpx
import yaml

from support.audio import make_mix
from support.daemon import write_config
from support.http import EPHEMERAL, http_url
from support.instrumented_model import gated_daemon
from support.postgres import PostgresServer
from support.waiting import wait_until


def test_a_frozen_database_does_not_freeze_the_http_server(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    daemon, config, gate = gated_daemon(tmp_path)
    settings = yaml.safe_load(config.read_text())
    settings["http"] = EPHEMERAL
    settings["ledger"] = {"url": postgres.new_database()}
    write_config(config, settings)
    daemon.start()
    answers: list[httpx.Response] = []
    try:
        url = http_url(daemon)
        daemon.wait_ready()
        song = make_mix(tmp_path / "made" / "song.wav", 2.0)
        body = {"instances": [{"b64": base64.b64encode(song.read_bytes()).decode()}]}

        def predict() -> None:  # waits for its job, asking the ledger 4 times a second
            answers.append(httpx.post(f"{url}/predict", json=body, timeout=120))

        waiting = threading.Thread(target=predict, daemon=True)
        waiting.start()
        wait_until((gate / "entered").exists, 60, "the job on the model, /predict waiting")
        postgres.freeze()
        pollers: list[threading.Thread] = []
        try:
            # the page's polls pile up in the pool behind the frozen database: more of
            # them than the pool has threads (40), so only the loop itself is left
            def poll() -> None:
                with contextlib.suppress(httpx.HTTPError):
                    httpx.get(f"{url}/api/v1/status", timeout=20)

            pollers.extend(threading.Thread(target=poll, daemon=True) for _ in range(50))
            for poller in pollers:
                poller.start()
            slowest = 0.0
            deadline = time.monotonic() + 3.0  # the /predict poll meets the frozen server
            with httpx.Client(base_url=url, timeout=5) as http:
                while time.monotonic() < deadline:
                    for path in ("/ping", "/"):
                        started = time.monotonic()
                        answer = http.get(path)
                        slowest = max(slowest, time.monotonic() - started)
                        assert answer.status_code in (200, 503), path  # 503: it says why
            assert slowest < 1.0, f"the slowest answer took {slowest:.2f}s"
        finally:
            postgres.thaw()
            for poller in pollers:
                poller.join(30)
        (gate / "open").touch()
        waiting.join(120)
        assert answers and answers[0].status_code == 200, answers
        assert daemon.stop() == 0
    finally:
        (gate / "open").touch()
        postgres.thaw()
        daemon.kill()
