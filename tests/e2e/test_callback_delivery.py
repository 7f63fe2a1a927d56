"""Callbacks as a receiver sees them: a real daemon (the instrumented test model,
which fails on request), real uvicorn, uploads with a `callback_url` on a real
local receiver that checks each POST's signature with the daemon's secret; a
receiver that never answers and one that refuses connections, timed against
the next jobs; and the URLs refused at submission."""

from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from stemd.callbacks.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from support.audio import make_tone
from support.daemon import Daemon, service_config
from support.http import EPHEMERAL, client, http_url, spool_files
from support.instrumented_model import FAIL_ENV, instrumented_model, model_env
from support.receiver import Hanging, Received, Receiver, refused_port
from support.waiting import wait_until

pytestmark = pytest.mark.slow


def start(root: Path, repo: Path) -> tuple[Daemon, httpx.Client, Path]:
    """A daemon whose model fails while `root/fail` exists (no retries)."""
    config = service_config(
        root, http=EPHEMERAL, model=instrumented_model(repo), source={"max_attempts": 1}
    )
    env, _record = model_env(root)
    fail = root / "fail"
    daemon = Daemon(config, root, env={**env, FAIL_ENV: str(fail)}).start()
    daemon.wait_ready()
    return daemon, client(http_url(daemon)), fail


def tone(root: Path, name: str, frequency: float) -> Path:
    return make_tone(root / "made" / name, 1.0, frequency=frequency)


def wait_state(http: httpx.Client, job_id: int, state: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(f"/api/v1/jobs/{job_id}").json()
        return job if job["state"] == state else None

    return wait_until(ended, 60, f"job {job_id} to be {state}")


def checked(received: Received, secret: bytes) -> dict[str, Any]:
    """The job a callback carries, once its signature is verified as the README's
    receiver does."""
    timestamp = received.headers[TIMESTAMP_HEADER]
    assert abs(time.time() - int(timestamp)) < 120
    assert verify(received.raw, timestamp, received.headers[SIGNATURE_HEADER], secret)
    assert not verify(received.raw + b" ", timestamp, received.headers[SIGNATURE_HEADER], secret)
    body: dict[str, Any] = json.loads(received.raw)
    return body


def test_a_done_and_a_failed_job_each_call_back_once_signed_with_the_secret(
    tmp_path: Path, instrumented_repo: Path
) -> None:
    with Receiver() as receiver:
        hook = f"http://127.0.0.1:{receiver.port}"
        daemon, http, fail = start(tmp_path, instrumented_repo)
        try:
            secret_file = tmp_path / "state" / "callback-secret"  # made on the first start
            assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
            secret = secret_file.read_bytes().strip()

            # a multipart upload: callback_url is a form field beside the file, with
            # the job's own choices (only the vocals, as mp3)
            vocals_mp3 = {"stems": "vocals", "format": "mp3"}
            with open(tone(tmp_path, "good.wav", 330), "rb") as file:
                answer = http.post(
                    "/api/v1/jobs",
                    files={"file": ("good.wav", file)},
                    data={"callback_url": f"{hook}/done?token=abc", **vocals_mp3},
                )
            assert answer.status_code == 202, answer.text
            done = wait_state(http, answer.json()["id"], "done")
            (call,) = receiver.wait_for("/done?token=abc", 1, 30)
            assert checked(call, secret) == done  # the job as GET /api/v1/jobs/{id} shows it
            assert sorted(done["stems"]) == ["vocals"]
            assert done["output"]["stems"] == ["vocals"] and done["output"]["format"] == "mp3"

            # a raw body: callback_url in the query; the model fails it
            fail.touch()
            answer = http.post(
                "/api/v1/jobs",
                params={"filename": "bad.wav", "callback_url": f"{hook}/failed"},
                content=tone(tmp_path, "bad.wav", 550).read_bytes(),
            )
            assert answer.status_code == 202, answer.text
            failed = wait_state(http, answer.json()["id"], "failed")
            (call,) = receiver.wait_for("/failed", 1, 30)
            assert checked(call, secret) == failed
            assert "the test model fails on request" in failed["error"]
            fail.unlink()

            # the same content as the done job, with another URL: the job ended
            # already, so this input is called back at once, and the first is not again
            with open(tmp_path / "made" / "good.wav", "rb") as file:
                answer = http.post(
                    "/api/v1/jobs",
                    files={"file": ("again.wav", file)},
                    data={"callback_url": f"{hook}/again", **vocals_mp3},
                )
            assert answer.status_code == 200 and answer.json()["id"] == done["id"], answer.text
            (call,) = receiver.wait_for("/again", 1, 30)
            assert checked(call, secret)["id"] == done["id"]

            # /predict's parameters take it too: one call per instance's job
            b64 = base64.b64encode(tone(tmp_path, "p.wav", 770).read_bytes()).decode()
            answer = http.post(
                "/predict",
                json={"instances": [{"b64": b64}], "parameters": {"callback_url": f"{hook}/p"}},
            )
            assert answer.status_code == 200, answer.text[:300]
            (call,) = receiver.wait_for("/p", 1, 30)
            assert checked(call, secret)["state"] == "done"
        finally:
            assert daemon.stop() == 0, daemon.log()  # its last look claims anything still due
        counts = {
            path: len(receiver.at(path)) for path in ("/done?token=abc", "/failed", "/again", "/p")
        }
        assert counts == {"/done?token=abc": 1, "/failed": 1, "/again": 1, "/p": 1}, counts
    log = daemon.log()
    assert log.count("delivered (HTTP 200, try 1") == 4, log
    assert "token=abc" not in log  # URLs are logged masked


def test_receivers_that_hang_or_refuse_do_not_slow_the_next_jobs(
    tmp_path: Path, instrumented_repo: Path
) -> None:
    with Hanging() as hanging:
        daemon, http, _fail = start(tmp_path, instrumented_repo)
        try:

            def upload(name: str, frequency: float, callback: str | None = None) -> int:
                params = {"filename": name} | ({"callback_url": callback} if callback else {})
                answer = http.post(
                    "/api/v1/jobs",
                    params=params,
                    content=tone(tmp_path, name, frequency).read_bytes(),
                )
                assert answer.status_code == 202, answer.text
                return int(answer.json()["id"])

            def two_jobs(prefix: str, base: float, callbacks: list[str | None]) -> float:
                started = time.monotonic()
                ids = [
                    upload(f"{prefix}{i}.wav", base + 40 * i, cb) for i, cb in enumerate(callbacks)
                ]
                for job_id in ids:
                    wait_state(http, job_id, "done")
                return time.monotonic() - started

            calm = two_jobs("calm", 300, [None, None])
            dead = [f"http://127.0.0.1:{hanging.port}/hung", f"http://127.0.0.1:{refused_port()}/x"]
            with_dead = two_jobs("dead", 600, dead)
            # and the jobs after them, while those receivers are still being tried
            after = two_jobs("after", 900, [None, None])
            print(f"two jobs: {calm:.1f}s calm, {with_dead:.1f}s with dead receivers, {after:.1f}s")
            assert with_dead < 2 * calm + 3, (calm, with_dead)
            assert after < 2 * calm + 3, (calm, after)
            wait_until(lambda: hanging.connections, 30, "the hung receiver to be tried")
            wait_until(
                lambda: "Connection refused (try 1 of 10" in daemon.log(), 30, "the refused try"
            )
        finally:
            stopping = time.monotonic()
            assert daemon.stop() == 0, daemon.log()
            stopped_in = time.monotonic() - stopping
    assert stopped_in < 20, stopped_in  # a send that hangs holds shutdown for its grace, no more


def test_a_callback_not_delivered_before_stemd_stopped_is_posted_after_its_next_start(
    tmp_path: Path, instrumented_repo: Path
) -> None:
    port = refused_port()  # the receiver is down while the job ends
    daemon, http, _fail = start(tmp_path, instrumented_repo)
    try:
        answer = http.post(
            "/api/v1/jobs",
            params={"filename": "a.wav", "callback_url": f"http://127.0.0.1:{port}/back"},
            content=tone(tmp_path, "a.wav", 440).read_bytes(),
        )
        assert answer.status_code == 202, answer.text
        done = wait_state(http, answer.json()["id"], "done")
        wait_until(lambda: "Connection refused (try 1 of 10" in daemon.log(), 30, "a try")
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert "1 not delivered before stopping; sent after the next start" in daemon.log()
    with Receiver(port=port) as receiver:
        daemon, http, _fail = start(tmp_path, instrumented_repo)
        try:
            (call,) = receiver.wait_for("/back", 1, 30)
            secret = (tmp_path / "state" / "callback-secret").read_bytes().strip()
            assert checked(call, secret) == done
        finally:
            assert daemon.stop() == 0, daemon.log()
        assert len(receiver.at("/back")) == 1


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/x",
        "http://[::ffff:169.254.169.254]/x",
        "http://2852039166/x",
        "http://[64:ff9b::a9fe:a9fe]/x",  # NAT64
        "http://[2001:0:4136:e378:8000:63bf:5601:5601]/x",  # Teredo
        "localhost:8080/x",
    ],
)
def test_callback_urls_stemd_will_not_call_are_refused_at_submission(
    url: str, refused_daemon: tuple[Daemon, httpx.Client, Path]
) -> None:
    _daemon, http, root = refused_daemon
    audio = tone(root, "refused.wav", 440).read_bytes()
    answers = {
        "query": http.post(
            "/api/v1/jobs", params={"filename": "r.wav", "callback_url": url}, content=audio
        ),
        "form": http.post(
            "/api/v1/jobs", files={"file": ("r.wav", audio)}, data={"callback_url": url}
        ),
        "predict": http.post(
            "/predict",
            json={
                "instances": [{"b64": base64.b64encode(audio).decode()}],
                "parameters": {"callback_url": url},
            },
        ),
    }
    for how, answer in answers.items():
        assert answer.status_code == 422, (how, answer.text)
        detail = answer.json()["detail"]
        key = "parameters.callback_url" if how == "predict" else "callback_url"
        assert detail.startswith(f"{key} "), (how, detail)
        assert any(why in detail for why in ("link-local", "only http:// and https://")), (
            how,
            detail,
        )
    assert http.get("/api/v1/jobs").json()["jobs"] == []  # nothing was taken
    assert spool_files(root) == []


@pytest.fixture(scope="module")
def refused_daemon(
    tmp_path_factory: pytest.TempPathFactory,
) -> Any:
    root = tmp_path_factory.mktemp("refusals")
    config = service_config(root, http=EPHEMERAL)
    daemon = Daemon(config, root).start()
    try:
        daemon.wait_ready()
        yield daemon, client(http_url(daemon)), root
    finally:
        assert daemon.stop() == 0, daemon.log()
