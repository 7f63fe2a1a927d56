"""/predict's answers: streamed, each stem base64-encoded a block at a time, so two
large answers cost the daemon's memory no more than their requests do (measured: its
resident memory, sampled while they are sent); past http.max_predict_answer an answer
is refused (413, naming the limit and where the stems are), since its client holds it
whole; at most http.predict_answers are prepared (transcoded) at once."""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path

import httpx

from support.audio import make_mix
from support.daemon import Daemon, service_config
from support.http import EPHEMERAL, client, http_url
from support.waiting import wait_until

MIB = 2**20


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Sampler:
    """The daemon's highest resident memory while the answers are made, sampled every
    20 ms (its VmHWM holds the separation's peak from before)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.highest = pid, 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.highest = max(self.highest, vm_rss_mib(self.pid))


def body(path: Path, fmt: str) -> dict[str, object]:
    b64 = base64.b64encode(path.read_bytes()).decode()
    return {"instances": [{"b64": b64}], "parameters": {"format": fmt}}


def test_an_answer_over_the_limit_is_refused_and_points_to_the_stems(tmp_path: Path) -> None:
    http_section = {**EPHEMERAL, "max_predict_answer": "4MiB"}
    daemon = Daemon(service_config(tmp_path, http=http_section), tmp_path).start()
    try:
        url = http_url(daemon)
        daemon.wait_ready()
        song = make_mix(tmp_path / "made" / "song.wav", 10.0)
        with client(url, timeout=120) as http:
            # 4 stems x 10 s of 16-bit stereo wav: about 9 MiB of base64
            refused = http.post("/predict", json=body(song, "wav"))
            assert refused.status_code == 413, refused.text
            detail = refused.json()["detail"]
            assert "http.max_predict_answer (4 MiB)" in detail["error"]
            zipped = http.get(detail["stems"][0])
            assert zipped.status_code == 200 and zipped.content[:2] == b"PK"  # ready there
            # the same stems as mp3 at 320 kbps: about 2 MiB, answered
            answered = http.post("/predict", json=body(song, "mp3"))
            assert answered.status_code == 200 and set(answered.json()) >= {"vocals", "drums"}
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_two_large_answers_are_built_one_at_a_time(tmp_path: Path) -> None:
    http_section = {**EPHEMERAL, "max_upload": "64MiB", "predict_answers": 1}
    daemon = Daemon(service_config(tmp_path, http=http_section), tmp_path).start()
    try:
        url = http_url(daemon)
        daemon.wait_warm()
        songs = [make_mix(tmp_path / "made" / f"s{i}.wav", 60.0 + i) for i in range(2)]
        with client(url, timeout=300) as http:  # separated first: only the answers differ
            for song in songs:
                created = http.post("/api/v1/jobs", files={"file": (song.name, song.read_bytes())})
                job_id = created.json()["id"]
                wait_until(
                    lambda j=job_id: http.get(f"/api/v1/jobs/{j}").json()["state"] == "done",
                    120,
                    f"{song.name} separated",
                )
        before = vm_rss_mib(daemon.pid)
        sampler = Sampler(daemon.pid)
        sampler.thread.start()
        answers: list[httpx.Response] = []

        def ask(song: Path) -> None:
            answers.append(httpx.post(f"{url}/predict", json=body(song, "wav"), timeout=300))

        askers = [threading.Thread(target=ask, args=(song,)) for song in songs]
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join(300)
        sampler.done.set()
        sampler.thread.join(10)
        assert [a.status_code for a in answers] == [200, 200]
        size = max(sum(len(v) for v in a.json().values()) for a in answers) / MIB
        grew = sampler.highest - before
        print(f"answer {size:.0f} MiB of base64; the daemon's resident memory grew {grew:.0f} MiB")
        # the answers are streamed, a block at a time: what grows is the requests' own
        # bodies (JSON text, its string, the decoded file: about 3x each), never an
        # answer whole (built whole, the two took 369 MiB here, 475 two at once)
        bodies = sum(len(json.dumps(body(song, "wav"))) for song in songs) / MIB
        assert grew < 3 * bodies + 64, f"grew {grew:.0f} MiB; bodies {bodies:.0f} MiB"
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_an_answer_whose_client_leaves_leaves_nothing_behind(tmp_path: Path) -> None:
    """A transcoded answer is prepared in a scratch folder under the spool; a client
    that hangs up before reading it must not leave that folder (nor its files open)."""
    daemon = Daemon(service_config(tmp_path, http=EPHEMERAL), tmp_path).start()
    try:
        url = http_url(daemon)
        daemon.wait_ready()
        song = make_mix(tmp_path / "made" / "song.wav", 5.0)
        spool = tmp_path / "state" / "uploads"
        with (
            httpx.Client(base_url=url, timeout=120) as http,
            http.stream("POST", "/predict", json=body(song, "flac")) as answer,
        ):
            assert answer.status_code == 200
            next(answer.iter_bytes())  # the first bytes, then gone
        wait_until(
            lambda: not list(spool.glob("answer-*")), 30, "the answer's scratch folder removed"
        )
        fds = Path(f"/proc/{daemon.pid}/fd")
        held = [os.readlink(fd) for fd in fds.iterdir() if "answer-" in os.readlink(fd)]
        assert held == []
        assert daemon.stop() == 0
    finally:
        daemon.kill()
