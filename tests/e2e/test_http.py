"""The HTTP server in a real daemon: a real uvicorn on an ephemeral port, a real
HTTP client, real files, the test model separating for real.

One daemon serves the module's tests (each uses audio of its own, so they do not
see each other's jobs); the token, limits and shutdown tests start their own.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import shutil
import signal
import socket
import stat
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from support.audio import make_mix, make_tone, probe
from support.daemon import Daemon, service_config, stemd
from support.http import EPHEMERAL, client, http_url, listening_ports, spool_files
from support.instrumented_model import gated_daemon
from support.waiting import wait_until

STEMS = {"drums", "bass", "other", "vocals"}
MODEL_DIR = "demucs_unittest"
PREDICT_ROUTE = "/v1/models/stemd:predict"
HEALTH_ROUTE = "/v1/models/stemd"


class Served:
    def __init__(self, root: Path, daemon: Daemon, url: str) -> None:
        self.root = root
        self.daemon = daemon
        self.url = url
        self.http = client(url)
        self._made = 0

    def audio(self, name: str, seconds: float = 3.0, mp3: bool = True) -> Path:
        """A mix no other test uses (its own length), as mp3 or wav."""
        self._made += 1
        args = ("-b:a", "192k") if mp3 else ()
        return make_mix(self.root / "made" / name, seconds + self._made * 0.01, args)

    def separations(self, source: str) -> int:
        """How often the log says a separation of `source` began."""
        return self.daemon.log().count(f"{source}: separating (attempt")

    def wait_done(self, job_id: int, timeout: float = 60) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job: dict[str, Any] = self.http.get(f"/api/v1/jobs/{job_id}").json()
            assert job["state"] != "failed", job
            return job if job["state"] == "done" else None

        return wait_until(done, timeout, f"job {job_id} to be done")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("served")
    config = service_config(root, http={**EPHEMERAL, "max_upload": "4MiB"})
    env = {"AIP_PREDICT_ROUTE": PREDICT_ROUTE, "AIP_HEALTH_ROUTE": HEALTH_ROUTE}
    daemon = Daemon(config, root, env=env).start()
    try:
        daemon.wait_warm()
        yield Served(root, daemon, http_url(daemon))
    finally:
        assert daemon.stop() == 0, daemon.log()


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def decoded_stems(answer: dict[str, str], folder: Path, ext: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for stem, data in answer.items():
        files[stem] = folder / f"{stem}.{ext}"
        files[stem].write_bytes(base64.b64decode(data, validate=True))
    return files


def duration(path: Path) -> float:
    return float(probe(path)["duration"])


# -- the seed's /predict ----------------------------------------------------------


def test_predict_answers_the_seeds_shape_with_320k_mp3_stems(
    served: Served, tmp_path: Path
) -> None:
    mix = served.audio("seed.mp3")
    response = served.http.post("/predict", json={"instances": [{"b64": b64(mix)}]})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == STEMS  # stem -> base64, nothing around it
    for path in decoded_stems(answer, tmp_path / "answer", "mp3").values():
        info = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name,bit_rate",
                "-of",
                "json",
                str(path),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        stream = json.loads(info)["streams"][0]
        assert stream["codec_name"] == "mp3"
        assert stream["bit_rate"] == "320000"
        assert abs(duration(path) - duration(mix)) < 0.1
    # the published stems are wav (the outbox's format): transcoded for the answer,
    # and the track is in the outbox for share users too
    name = f"predict-{__import__('hashlib').sha256(mix.read_bytes()).hexdigest()[:12]}"
    folder = served.root / "outbox" / MODEL_DIR / "uploads" / name
    assert sorted(p.name for p in folder.glob("*.wav")) == sorted(f"{s}.wav" for s in STEMS)

    # the same body at $AIP_PREDICT_ROUTE: answered from the stems, not separated again
    again = served.http.post(PREDICT_ROUTE, json={"instances": [{"b64": b64(mix)}]})
    assert again.status_code == 200
    assert set(again.json()) == STEMS
    assert served.separations(f"uploads/{name}") == 1


def test_predict_with_three_instances_and_wav_asked_for(served: Served, tmp_path: Path) -> None:
    mixes = [served.audio(f"three-{i}.mp3", seconds=2.0 + i) for i in range(3)]
    body = {"instances": [{"b64": b64(m)} for m in mixes], "parameters": {"format": "wav"}}
    response = served.http.post("/predict", json=body)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 3
    for index, (mix, answer) in enumerate(zip(mixes, predictions, strict=True)):
        assert set(answer) == STEMS
        for path in decoded_stems(answer, tmp_path / str(index), "wav").values():
            assert path.read_bytes()[:4] == b"RIFF"
            assert abs(duration(path) - duration(mix)) < 0.1


# -- the jobs API -----------------------------------------------------------------


def test_jobs_api_round_trip(served: Served) -> None:
    mix = served.audio("round trip.wav", mp3=False)
    with mix.open("rb") as handle:
        response = served.http.post("/api/v1/jobs", files={"file": ("round trip.wav", handle)})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["source"] == "uploads/round trip.wav"
    assert response.headers["location"] == f"/api/v1/jobs/{job['id']}"
    done = served.wait_done(job["id"])
    assert set(done["stems"]) == STEMS
    folder = served.root / "outbox" / done["output_dir"]
    for stem, url in done["stems"].items():
        whole = served.http.get(url)
        assert whole.status_code == 200
        assert whole.headers["content-type"] == "audio/wav"
        assert whole.content == (folder / f"{stem}.wav").read_bytes()
        part = served.http.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206
        assert part.content == whole.content[100:200]
    archive = served.http.get(done["zip"])
    assert archive.status_code == 200
    assert archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as opened:
        assert sorted(opened.namelist()) == sorted(f"{s}.wav" for s in STEMS)
        assert opened.read("vocals.wav") == (folder / "vocals.wav").read_bytes()
    peaks = served.http.get(f"/api/v1/jobs/{job['id']}/peaks").json()  # the mixer's waveforms
    assert set(peaks["stems"]) == STEMS and peaks["frames"] > 0
    assert all(len(p["min"]) == len(p["max"]) == peaks["points"] for p in peaks["stems"].values())
    listed = served.http.get("/api/v1/jobs", params={"state": "done", "limit": 500}).json()
    assert job["id"] in [j["id"] for j in listed["jobs"]]
    status = served.http.get("/api/v1/status").json()
    assert status["counts"]["done"] >= 1 and "failed" in status
    info = served.http.get("/api/v1/info").json()
    assert info["model"] == "demucs_unittest" and info["device"] == "cpu"
    assert info["outbox_free_bytes"] > 0
    paths = served.http.get("/openapi.json").json()["paths"]
    for path in (
        "/predict",
        PREDICT_ROUTE,
        "/api/v1/jobs",
        "/api/v1/jobs/{job_id}",
        "/api/v1/jobs/{job_id}/stems/{stem}",
        "/api/v1/jobs/{job_id}/stems.zip",
        "/api/v1/jobs/{job_id}/peaks",
        "/api/v1/jobs/{job_id}/retry",
        "/api/v1/status",
        "/api/v1/events",
        "/health",
        "/ping",
        "/metrics",
    ):
        assert path in paths, path
    assert spool_files(served.root) == []  # the upload's spool file went with success


def test_client_names_are_stored_under_safe_names(served: Served) -> None:
    cases: dict[str | None, str] = {
        "../../escape.wav": "escape.wav",
        "a\0b.wav": "a_b.wav",
        "..": "upload-{hash}.wav",  # no name left: named for its content and codec
        None: "upload-{hash}.mp3",  # no ?filename= at all
        "x" * 300 + ".wav": "x" * 251 + ".wav",
    }
    for index, (given, safe) in enumerate(cases.items()):
        mp3 = safe.endswith(".mp3")
        body = served.audio(f"name{index}.{'mp3' if mp3 else 'wav'}", mp3=mp3).read_bytes()
        params = {"filename": given} if given is not None else {}
        response = served.http.post("/api/v1/jobs", params=params, content=body)
        assert response.status_code == 202, response.text
        job = response.json()
        safe = safe.format(hash=hashlib.sha256(body).hexdigest()[:12])
        assert job["source"] == f"uploads/{safe}"
        done = served.wait_done(job["id"])
        assert done["output_dir"].startswith(f"{MODEL_DIR}/uploads/")
        if given is None:  # its folder is named for it too, not `upload`
            assert done["output_dir"] == f"{MODEL_DIR}/uploads/{safe.removesuffix('.mp3')}"
    assert not (served.root.parent / "escape.wav").exists()
    assert len(spool_files(served.root)) == 0


def test_dedup_between_the_inbox_and_http_both_ways(served: Served) -> None:
    # inbox first: the upload is answered at once, no second separation
    first = served.audio("shared first.wav", mp3=False)
    shutil.copyfile(first, served.root / "inbox" / "shared first.wav")
    wait_until(lambda: "shared first.wav: stems in" in served.daemon.log(), 60, "the inbox file")
    response = served.http.post(
        "/api/v1/jobs", params={"filename": "again.wav"}, content=first.read_bytes()
    )
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "done"
    assert set(response.json()["stems"]) == STEMS
    assert served.separations("shared first.wav") == 1
    assert served.separations("uploads/again.wav") == 0

    # HTTP first: the same bytes dropped into the inbox get the stems reused
    second = served.audio("shared second.wav", mp3=False)
    job = served.http.post(
        "/api/v1/jobs", params={"filename": "up.wav"}, content=second.read_bytes()
    ).json()
    served.wait_done(job["id"])
    shutil.copyfile(second, served.root / "inbox" / "dropped.wav")
    wait_until(
        lambda: "dropped.wav: same content as uploads/up.wav" in served.daemon.log(),
        60,
        "the inbox copy to reuse the upload's stems",
    )
    assert served.separations("uploads/up.wav") == 1
    assert served.separations("dropped.wav") == 0
    assert (served.root / "outbox" / MODEL_DIR / "dropped" / "vocals.wav").is_file()


# -- bad requests -------------------------------------------------------------------


def test_bad_requests_get_clear_answers_and_change_nothing(served: Served) -> None:
    before = served.http.get("/api/v1/status").json()["counts"]
    text = b"this is not audio, just words\n" * 100

    def upload(content: bytes, name: str = "x.mp3") -> httpx.Response:
        return served.http.post("/api/v1/jobs", files={"file": (name, content)})

    not_audio = upload(text, "notes.mp3")
    assert not_audio.status_code == 422
    assert "notes.mp3" in not_audio.json()["detail"]
    empty = upload(b"", "empty.wav")
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]
    no_field = served.http.post("/api/v1/jobs", files={"other": ("x.wav", b"123")})
    assert no_field.status_code == 422 and "'file'" in no_field.json()["detail"]

    big = b"\0" * (5 * 1024 * 1024)  # max_upload is 4 MiB
    declared = served.http.post("/api/v1/jobs", params={"filename": "big.wav"}, content=big)
    assert declared.status_code == 413 and "max_upload" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: stopped while streaming
        for _ in range(5 * 16):
            yield b"\0" * 65536

    streamed = served.http.post("/api/v1/jobs", params={"filename": "big.wav"}, content=chunks())
    assert streamed.status_code == 413
    multipart_big = upload(big, "big.wav")
    assert multipart_big.status_code == 413

    bad_json = served.http.post(
        "/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400 and "not JSON" in bad_json.json()["detail"]
    bad_b64 = served.http.post("/predict", json={"instances": [{"b64": "***not base64***"}]})
    assert bad_b64.status_code == 400 and "instances[0].b64" in bad_b64.json()["detail"]
    no_instances = served.http.post("/predict", json={"files": []})
    assert no_instances.status_code == 400 and "instances" in no_instances.json()["detail"]
    bad_format = served.http.post(
        "/predict",
        json={
            "instances": [{"b64": base64.b64encode(text).decode()}],
            "parameters": {"format": "ogg"},
        },
    )
    assert bad_format.status_code == 400 and "format" in bad_format.json()["detail"]
    predict_text = served.http.post(
        "/predict", json={"instances": [{"b64": base64.b64encode(text).decode()}]}
    )
    assert predict_text.status_code == 422 and "instances[0]" in predict_text.json()["detail"]
    good = served.audio("good beside bad.wav", mp3=False)
    one_bad = served.http.post(
        "/predict",
        json={"instances": [{"b64": b64(good)}, {"b64": base64.b64encode(text).decode()}]},
    )
    assert one_bad.status_code == 422 and "instances[1]" in one_bad.json()["detail"]

    missing = served.http.get("/api/v1/jobs/999999")
    assert missing.status_code == 404 and "999999" in missing.json()["detail"]
    bad_state = served.http.get("/api/v1/jobs", params={"state": "sleeping"})
    assert bad_state.status_code == 422

    after = served.http.get("/api/v1/status").json()["counts"]
    assert after == before  # nothing was queued, nothing failed
    assert spool_files(served.root) == []  # and nothing was kept


def test_an_unknown_stem_of_a_done_job_is_a_404_naming_it(served: Served) -> None:
    song = served.audio("for the 404.wav", mp3=False)
    made = served.http.post("/api/v1/jobs", files={"file": (song.name, song.read_bytes())})
    assert made.status_code in (200, 202), made.text
    job = served.wait_done(made.json()["id"])
    no_stem = served.http.get(f"/api/v1/jobs/{job['id']}/stems/kazoo")
    assert no_stem.status_code == 404
    detail = no_stem.json()["detail"]
    assert "kazoo" in detail and "vocals" in detail  # the stems it does have


def test_predict_of_a_file_found_corrupt_while_decoding_is_a_422(tmp_path: Path) -> None:
    """The header passes the arrival checks; the audio behind it is garbage. The
    request's input is at fault, so the answer is 422 with the reason, not the 500
    that stays for stemd's own failures. (A daemon of its own: the failed upload's
    spool file is kept for a retry, and the module's daemon is to keep none.)"""
    song = make_tone(tmp_path / "corrupt.flac", 10.0)
    data = song.read_bytes()
    damaged = data[:20000] + random.Random(5).randbytes(len(data) - 20000)
    daemon = Daemon(service_config(tmp_path, http=EPHEMERAL), tmp_path).start()
    try:
        daemon.wait_ready()
        with client(http_url(daemon)) as http:
            answer = http.post(
                "/predict", json={"instances": [{"b64": base64.b64encode(damaged).decode()}]}
            )
            assert answer.status_code == 422, answer.text
            detail = answer.json()["detail"]
            assert "corrupt: it decodes to" in detail and "/api/v1/jobs/" in detail
            job_id = detail.rsplit("/api/v1/jobs/", 1)[1]
            job = http.get(f"/api/v1/jobs/{job_id}").json()
            assert job["state"] == "failed" and job["fault"] == "input"
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_a_cancelled_upload_leaves_no_spool_file(served: Served) -> None:
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/jobs?filename=gone.wav HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 3000000\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        sock.sendall(b"RIFF" + b"\0" * 200_000)
        wait_until(
            lambda: any(n.endswith(".part") for n in spool_files(served.root)),
            10,
            "the upload to reach the spool",
        )
    # the client hung up mid-body
    wait_until(lambda: spool_files(served.root) == [], 15, "the part file to be removed")
    assert served.http.get("/ping").status_code == 200
    # said in one line naming the upload, not a starlette traceback
    said = wait_until(
        lambda: [line for line in served.daemon.log().splitlines() if "gone.wav" in line],
        10,
        "the log to say the client went away",
    )
    assert len(said) == 1 and "went away" in said[0], said
    assert "ClientDisconnect" not in served.daemon.log()
    assert "Traceback" not in served.daemon.log()


# -- operations -----------------------------------------------------------------------


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or (line.startswith(name + "{") and " " in line):
            key, value = line.rsplit(" ", 1)
            if key == name:
                return float(value)
    return 0.0


def test_metrics_move_and_events_stream(served: Served) -> None:
    before = served.http.get("/metrics").text
    received: list[dict[str, Any]] = []
    listening = threading.Event()

    def listen() -> None:
        with (
            client(served.url, timeout=30) as stream_client,
            stream_client.stream("GET", "/api/v1/events") as stream,
        ):
            event = ""
            for line in stream.iter_lines():
                listening.set()
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    received.append({"event": event, **json.loads(line[6:])})
                    if event == "done":
                        return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert listening.wait(10), "the event stream did not open"
    mix = served.audio("metered.wav", mp3=False)
    job = served.http.post(
        "/api/v1/jobs", params={"filename": "metered.wav"}, content=mix.read_bytes()
    ).json()
    served.wait_done(job["id"])
    thread.join(30)
    assert not thread.is_alive(), "no done event arrived"
    events = [e["event"] for e in received if e.get("job") == job["id"]]
    assert "started" in events and events[-1] == "done"

    after = served.http.get("/metrics").text
    assert metric(after, "stemd_separations_total") == metric(before, "stemd_separations_total") + 1
    assert (
        metric(after, "stemd_audio_separated_seconds_total")
        > metric(before, "stemd_audio_separated_seconds_total") + 2.9
    )
    assert metric(after, "stemd_separation_seconds_count") > metric(
        before, "stemd_separation_seconds_count"
    )
    assert 'stemd_jobs{state="done"}' in after
    assert 'stemd_http_requests_total{code="202",route="/api/v1/jobs"}' in after
    assert metric(after, "stemd_model_load_seconds") > 0
    assert metric(after, "stemd_model_warmup_seconds") > 0


def test_health_routes_answer_like_the_seed(served: Served) -> None:
    for route in ("/health", HEALTH_ROUTE):
        response = served.http.get(route)
        assert response.status_code == 200 and response.json() == {"status": "healthy"}
    assert served.http.get("/ping").json() == {"status": "ok"}
    page = served.http.get("/")
    assert page.status_code == 200 and "<title>stemd</title>" in page.text
    assert "http" not in page.text.split("<body>")[0].replace("http-equiv", "")  # no CDN
    assert served.http.get("/static/app.js").status_code == 200


# -- the token ----------------------------------------------------------------------------


def test_token_guards_everything_but_ping(tmp_path: Path) -> None:
    made = stemd("token", "new", str(tmp_path / "secret" / "token"), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    token_file = tmp_path / "secret" / "token"
    token = made.stdout.strip()
    assert token_file.read_text().strip() == token and len(token) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    config = service_config(
        tmp_path, http={**EPHEMERAL, "token_file": str(token_file), "max_upload": "1GiB"}
    )
    daemon = Daemon(config, tmp_path).start()
    try:
        url = http_url(daemon)
        daemon.wait_warm()  # the warm-up's peak is behind us before memory is compared
        assert "token required" in daemon.log()
        with client(url) as anonymous:
            assert anonymous.get("/ping").status_code == 200
            for path in ("/", "/api/v1/status", "/metrics", "/health"):
                refused = anonymous.get(path)
                assert refused.status_code == 401, path
                assert refused.headers["www-authenticate"].startswith("Basic")
            wrong = anonymous.get("/api/v1/status", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            basic = anonymous.get("/api/v1/status", auth=("", token))
            assert basic.status_code == 200
        with client(url, token=token) as bearer:
            assert bearer.get("/api/v1/status").status_code == 200
            assert bearer.post("/predict", json={"instances": []}).status_code == 400

            # An upload streams onto disk: 400 MB through the daemon (refused in
            # the end: zeros are not audio) leave its peak memory where it was.
            peak_before = peak_rss(daemon.pid)

            def zeros() -> Iterator[bytes]:
                for _ in range(400):
                    yield bytes(1_000_000)

            refused = bearer.post("/api/v1/jobs", params={"filename": "z.wav"}, content=zeros())
            assert refused.status_code == 422, refused.text
            grown = peak_rss(daemon.pid) - peak_before
            assert grown < 64 * 2**20, f"peak RSS grew {grown / 2**20:.0f} MiB"
            assert spool_files(tmp_path) == []
    finally:
        assert daemon.stop() == 0, daemon.log()


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_listen_on_a_lan_without_token_is_a_config_error(tmp_path: Path) -> None:
    config = service_config(tmp_path, http={"listen": "0.0.0.0:8750"})
    result = stemd("-c", str(config), "check", cwd=tmp_path)
    assert result.returncode == 78
    assert "http.listen" in result.stderr and "token_file" in result.stderr


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = service_config(tmp_path, http={"listen": f"127.0.0.1:{port}"})
        daemon = Daemon(config, tmp_path).start()
        assert daemon.process is not None
        assert daemon.process.wait(60) == 78
    assert "http.listen" in daemon.log() and f"127.0.0.1:{port}" in daemon.log()
    assert "loaded on" not in daemon.log()  # refused before the model loads


# -- limits and shutdown, with the model held at a gate --------------------------------------


def set_http(config: Path, **http: Any) -> None:
    settings = yaml.safe_load(config.read_text())
    settings["http"] = {**EPHEMERAL, **http}
    config.write_text(yaml.safe_dump(settings))


def test_queue_limit_sigterm_in_flight_and_predict_timeout(tmp_path: Path) -> None:
    daemon, config, gate = gated_daemon(tmp_path, shutdown_grace="2s", hang_timeout="3s")
    set_http(config, max_queue=3, predict_timeout="60s")
    tracks = [make_tone(tmp_path / f"t{i}.wav", 1.0, frequency=300 + 50 * i) for i in range(5)]

    def upload(http: httpx.Client, i: int) -> httpx.Response:
        return http.post(
            "/api/v1/jobs", params={"filename": f"t{i}.wav"}, content=tracks[i].read_bytes()
        )

    daemon.start()
    try:
        url = http_url(daemon)
        daemon.wait_warm()
        http = client(url)
        assert upload(http, 0).status_code == 202
        wait_until((gate / "entered").exists, 60, "the first job to reach the model")

        # In flight at SIGTERM: a /predict waiting for its queued job, an event stream.
        answers: dict[str, Any] = {}

        def wait_predict() -> None:
            try:
                answers["predict"] = http.post(
                    "/predict", json={"instances": [{"b64": b64(tracks[1])}]}
                )
            except httpx.HTTPError as err:
                answers["predict"] = err

        def hold_stream() -> None:
            with (
                client(url, timeout=30) as streamer,
                streamer.stream("GET", "/api/v1/events") as stream,
            ):
                answers["stream"] = sum(1 for _ in stream.iter_lines())

        threads = [threading.Thread(target=f, daemon=True) for f in (wait_predict, hold_stream)]
        for thread in threads:
            thread.start()
        wait_until(lambda: "uploads/predict-" in daemon.log(), 30, "the predict's job")

        for i in (2, 3):
            assert upload(http, i).status_code == 202
        full = upload(http, 4)  # three queued: the limit
        assert full.status_code == 503
        assert full.headers["retry-after"].isdigit() and "max_queue" in full.json()["detail"]

        # The held pass outlasts service.hang_timeout: /ping says so, as the
        # systemd watchdog would (it stops pinging).
        wait_until(lambda: http.get("/ping").status_code == 503, 30, "/ping to turn 503")
        problems = http.get("/ping").json()["problems"]
        assert any("no progress" in problem for problem in problems), problems

        daemon.signal(signal.SIGTERM)
        # the grace ends with a cancel the held pass cannot see until it returns
        wait_until(lambda: "cancelling at the next chunk" in daemon.log(), 30, "the cancel")
        assert listening_ports(daemon.pid) == []  # the server stopped before the worker
        (gate / "open").touch()
        assert daemon.process is not None
        assert daemon.process.wait(60) == 0, daemon.log()
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive()
        predict = answers["predict"]  # told, not left hanging or cut off
        assert isinstance(predict, httpx.Response), predict
        assert predict.status_code == 503 and "stopping" in predict.json()["detail"]
        log = daemon.log()
        assert "t0.wav: interrupted; requeued" in log or "t0.wav: stems in" in log

        # Started again with the gate shut: a /predict past http.predict_timeout
        # gets 504 and the id to poll.
        set_http(config, max_queue=10, predict_timeout="1s")
        (gate / "open").unlink()
        (gate / "entered").unlink()
        daemon.start()
        url = http_url(daemon)
        with client(url) as again:
            wait_until((gate / "entered").exists, 60, "the requeued job to reach the model")
            timed_out = again.post("/predict", json={"instances": [{"b64": b64(tracks[4])}]})
            assert timed_out.status_code == 504
            detail = timed_out.json()["detail"]
            assert "predict_timeout" in detail["error"] and len(detail["jobs"]) == 1
            polled = again.get(detail["poll"][0]).json()
            assert polled["state"] == "queued" and polled["queue_position"] >= 3

            # Nothing lost: with the gate open every accepted job finishes, once.
            (gate / "open").touch()

            def all_done() -> bool:
                counts = again.get("/api/v1/status").json()["counts"]
                return bool(counts["done"] == 5 and counts["queued"] == 0)

            wait_until(all_done, 120, "the five accepted jobs to finish")
            assert again.get("/api/v1/status").json()["counts"]["failed"] == 0
            assert again.get("/ping").json() == {"status": "ok"}  # moving again
        assert spool_files(tmp_path) == []
    finally:
        (gate / "open").touch()
        daemon.stop()


def test_an_upload_chooses_its_stems_and_format_and_gets_a_job_of_its_own(
    served: Served,
) -> None:
    """The per-job keys beside `file` (or in the query with a raw body): the same
    content asked for two ways is two jobs, each rendered as asked."""
    song = served.audio("choices.mp3")
    chosen = served.http.post(
        "/api/v1/jobs",
        files={"file": ("choices.mp3", song.read_bytes())},
        data={"stems": "vocals", "format": "mp3"},
    )
    assert chosen.status_code == 202, chosen.text
    job = served.wait_done(chosen.json()["id"])
    assert set(job["stems"]) == {"vocals"}
    assert job["output"]["stems"] == ["vocals"] and job["output"]["format"] == "mp3"
    stem = served.http.get(job["stems"]["vocals"])
    assert stem.headers["content-type"] == "audio/mpeg"
    # the same bytes, raw, two stems as flac: another job
    raw = served.http.post(
        "/api/v1/jobs",
        params={"filename": "choices.mp3", "two_stems": "vocals", "format": "flac"},
        content=song.read_bytes(),
    )
    assert raw.status_code == 202, raw.text
    other = served.wait_done(raw.json()["id"])
    assert other["id"] != job["id"] and set(other["stems"]) == {"vocals", "no_vocals"}
    assert other["output"]["two_stems"] == "vocals" and other["output"]["format"] == "flac"
    # asked again as before: the first job's stems, no new job
    again = served.http.post(
        "/api/v1/jobs",
        files={"file": ("again.mp3", song.read_bytes())},
        data={"format": "mp3", "stems": "vocals"},
    )
    assert again.status_code == 200 and again.json()["id"] == job["id"]


@pytest.mark.parametrize(
    ("data", "params", "named"),
    [
        ({"colour": "red"}, {}, "colour: not a per-job key"),
        ({"stems": "piano"}, {}, "stems: 'piano' is not a stem of demucs_unittest"),
        ({}, {"format": "ogg"}, "format: "),
        ({"format": "flac", "sample_format": "f32"}, {}, "sample_format: f32 is for wav only"),
        ({"format": "mp3"}, {"format": "mp3"}, "format: sent as a form field and in the query"),
        ({}, [("stems", "vocals"), ("stems", "drums")], "stems: sent twice in the query"),
    ],
)
def test_a_choice_that_cannot_be_rendered_is_refused_naming_the_key(
    served: Served,
    data: dict[str, str],
    params: dict[str, str] | list[tuple[str, str]],
    named: str,
) -> None:
    before = spool_files(served.root)
    answer = served.http.post(
        "/api/v1/jobs",
        params=params,
        files={"file": ("refused.mp3", b"not read: the choice is refused first")},
        data=data,
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith(named)
    assert spool_files(served.root) == before  # nothing left behind


def test_predict_takes_the_per_job_keys_in_its_parameters(served: Served) -> None:
    song = served.audio("predict-choices.mp3")
    body = {
        "instances": [{"b64": base64.b64encode(song.read_bytes()).decode()}],
        "parameters": {"format": "wav", "two_stems": "vocals"},
    }
    answer = served.http.post(PREDICT_ROUTE, json=body)
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"vocals", "no_vocals"}  # one instance: its stems
    refused = served.http.post(PREDICT_ROUTE, json={**body, "parameters": {"stems": ["piano"]}})
    assert refused.status_code == 400 and "parameters.stems: 'piano'" in refused.text
