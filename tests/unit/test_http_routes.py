"""The HTTP routes in-process, in milliseconds: the real app and a real SQLite ledger,
the daemon around them a stand-in (http.view's protocols). What needs a separation
or a real server is in tests/e2e/test_http*.py."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from stemd.config import Config, load_config
from stemd.http.app import create_app
from stemd.http.context import Context
from stemd.http.events import EventHub
from stemd.http.metrics import Metrics
from stemd.http.spool import Spool
from stemd.ledger import FileStat, Ledger, sqlite_ledger
from stemd.manifest import MANIFEST, manifest_stems, new_manifest, open_stem
from stemd.profile import Profile

SHA = "c" * 64


@dataclass(frozen=True)
class Model:
    name: str = "demucs_unittest"
    device: str = "cpu"
    sources: tuple[str, ...] = ("drums", "bass", "other", "vocals")
    backend: str = "openvino"
    precision: str = "fp32"


@dataclass
class Workers:
    model_info: Model = field(default_factory=Model)
    woken: int = 0

    def busy(self) -> list[Any]:
        return []

    def report(self) -> list[dict[str, Any]]:
        return [{"name": "w0", "device": "cpu", "job": None}]

    def wake(self) -> None:
        self.woken += 1

    def warm_up_seconds(self) -> float | None:
        return 0.1


@dataclass
class Daemon:
    config: Config
    ledger: Ledger
    workers: Workers = field(default_factory=Workers)
    intake: Any = None  # uploads are the e2e tests' (they need the model)
    model_load_seconds: float | None = 0.1
    started_at: float = field(default_factory=time.time)
    stopping: bool = False

    def health(self) -> list[str]:
        return []


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    overrides = {"inbox": "in", "outbox": "out", "state_dir": "state"}
    config = load_config(None, overrides, base_dir=tmp_path)
    config.state_dir.mkdir()
    ledger = sqlite_ledger(config.state_dir / "ledger.sqlite")
    yield Daemon(config, ledger)
    ledger.close()


@pytest.fixture
def http(daemon: Daemon) -> TestClient:
    context = Context(
        daemon,
        Spool(daemon.config.state_dir),
        EventHub(),
        Metrics(daemon.ledger.counts, lambda: (0.1, 0.1)),
        None,
        frozenset({"testserver", "localhost"}),
    )
    return TestClient(create_app(context))


def published_job(daemon: Daemon, folder: str = "demucs_unittest/song") -> int:
    """A job done through the ledger's own steps, its stems and manifest in place."""
    ledger = daemon.ledger
    record = ledger.add_input(daemon.config.inbox / "song.wav", "song.wav", FileStat(1, 1, 2, 3))
    assert record is not None
    job = ledger.attach(record.id, SHA, Profile("p", {}, "s"), "song.wav")
    claimed = ledger.claim_next(profile=Profile("p", {}, "s"))
    assert claimed is not None and claimed.id == job.id
    ledger.complete(claimed, record.id, folder)
    track = daemon.config.outbox / folder
    track.mkdir(parents=True)
    stems = {}
    for stem in Model().sources:
        (track / f"{stem}.wav").write_bytes(b"RIFF" + stem.encode() * 100)
        stems[stem] = f"{stem}.wav"
    (track / MANIFEST).write_text(json.dumps(new_manifest(sha256=SHA, stems=stems)))
    return job.id


def test_status_info_and_a_missing_job(http: TestClient) -> None:
    assert http.get("/api/v1/status").json()["counts"] == {
        "queued": 0,
        "running": 0,
        "done": 0,
        "failed": 0,
    }
    info = http.get("/api/v1/info").json()
    assert info["model"] == "demucs_unittest" and info["stems"][-1] == "vocals"
    assert (info["backend"], info["precision"]) == ("openvino", "fp32")  # what runs the pass
    missing = http.get("/api/v1/jobs/42")
    assert missing.status_code == 404 and "42" in missing.json()["detail"]


def test_a_stem_is_served_and_an_unknown_one_named(http: TestClient, daemon: Daemon) -> None:
    job_id = published_job(daemon)
    vocals = http.get(f"/api/v1/jobs/{job_id}/stems/vocals")
    assert vocals.status_code == 200 and vocals.content.startswith(b"RIFFvocals")
    assert (
        http.get(f"/api/v1/jobs/{job_id}/stems/vocals", headers={"Range": "bytes=0-3"}).content
        == b"RIFF"
    )
    kazoo = http.get(f"/api/v1/jobs/{job_id}/stems/kazoo")
    assert kazoo.status_code == 404
    assert "kazoo" in kazoo.json()["detail"] and "vocals" in kazoo.json()["detail"]


@pytest.mark.parametrize("name", ["/etc/hostname", "../../../state/ledger.sqlite", ".hidden.wav"])
def test_a_manifest_naming_a_file_outside_its_folder_serves_nothing(
    http: TestClient, daemon: Daemon, name: str
) -> None:
    job_id = published_job(daemon)
    manifest = daemon.config.outbox / "demucs_unittest/song" / MANIFEST
    data = json.loads(manifest.read_text())
    data["stems"]["vocals"] = name
    manifest.write_text(json.dumps(data))
    for path in ("stems/vocals", "stems/drums", "stems.zip"):
        assert http.get(f"/api/v1/jobs/{job_id}/{path}").status_code == 404, path


def test_a_stem_swapped_for_a_link_is_not_followed(http: TestClient, daemon: Daemon) -> None:
    job_id = published_job(daemon)
    secret = daemon.config.state_dir / "secret"
    secret.write_text("token")
    vocals = daemon.config.outbox / "demucs_unittest/song/vocals.wav"
    vocals.unlink()
    os.symlink(secret, vocals)
    answer = http.get(f"/api/v1/jobs/{job_id}/stems/vocals")
    assert answer.status_code == 404 and b"token" not in answer.content


def test_hostile_hosts_and_origins_are_refused(http: TestClient, daemon: Daemon) -> None:
    assert http.get("/api/v1/status", headers={"Host": "rebound.example"}).status_code == 400
    assert http.get("/api/v1/status", headers={"Host": "192.168.1.20:8750"}).status_code == 200
    retry = http.post("/api/v1/jobs/1/retry", headers={"Origin": "https://evil.example"})
    assert retry.status_code == 403
    assert daemon.workers.woken == 0


def test_a_track_folder_swapped_for_a_link_after_the_check_is_not_read(
    daemon: Daemon, tmp_path: Path
) -> None:
    """O_NOFOLLOW guards a path's last part only: a folder on the way swapped for a
    link between the manifest's check and the open must not lead outside the outbox."""
    published_job(daemon)
    outbox = daemon.config.outbox
    folder = outbox / "demucs_unittest/song"
    stems = manifest_stems(folder, outbox)
    assert stems is not None  # the check passes on the real folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "vocals.wav").write_bytes(b"the secret")
    folder.rename(outbox / "demucs_unittest/moved")
    folder.symlink_to(elsewhere)  # the share user's swap
    with pytest.raises(OSError, match="outside"):
        open_stem(stems["vocals"], outbox)


def test_odd_origins_are_refused_not_failed(http: TestClient) -> None:
    for origin in ("http://testserver:99999", "http://[::1", "http://testserver:3000", "null"):
        answer = http.post("/api/v1/jobs/1/retry", headers={"Origin": origin})
        assert answer.status_code == 403, origin
    same = http.post("/api/v1/jobs/1/retry", headers={"Origin": "http://testserver"})
    assert same.status_code == 404  # let through: no such job
    proxied = {"Origin": "https://stemd.lan", "X-Forwarded-Host": "stemd.lan"}
    assert http.post("/api/v1/jobs/1/retry", headers=proxied).status_code == 400  # not allowed
    proxied["X-Forwarded-Host"] = "localhost"
    proxied["Origin"] = "https://localhost"
    assert http.post("/api/v1/jobs/1/retry", headers=proxied).status_code == 404


def test_a_405_names_every_method_of_its_path_and_a_huge_id_is_refused(http: TestClient) -> None:
    jobs = http.request("DELETE", "/api/v1/jobs")
    assert jobs.status_code == 405
    assert {m.strip() for m in jobs.headers["allow"].split(",")} == {"GET", "POST"}
    assert "DELETE" in jobs.json()["detail"]
    one = http.request("PUT", "/api/v1/jobs/7")
    assert one.status_code == 405 and one.headers["allow"] == "GET"
    huge = http.get(f"/api/v1/jobs/{2**64}")  # past the ledger's 64-bit ids: not a 500
    assert huge.status_code == 422


def test_only_a_failed_job_can_be_dismissed(http: TestClient, daemon: Daemon) -> None:
    job_id = published_job(daemon)
    done = http.post(f"/api/v1/jobs/{job_id}/dismiss")
    assert done.status_code == 409 and "done, not failed" in done.json()["detail"]
    assert http.get(f"/api/v1/jobs/{job_id}").json()["dismissed"] is False
    assert http.post("/api/v1/jobs/999/dismiss").status_code == 404
    refused = http.post(
        f"/api/v1/jobs/{job_id}/dismiss", headers={"Origin": "https://evil.example"}
    )
    assert refused.status_code == 403


def with_peaks(daemon: Daemon, name: object = "peaks.json") -> Path:
    """The published job's folder, its manifest naming `name` as its peaks."""
    folder = daemon.config.outbox / "demucs_unittest/song"
    (folder / "peaks.json").write_text('{"version": 1, "stems": {}}')
    manifest = folder / MANIFEST
    data = json.loads(manifest.read_text())
    data["peaks"] = name
    manifest.write_text(json.dumps(data))
    return folder


def test_the_peaks_are_served_as_safely_as_a_stem(http: TestClient, daemon: Daemon) -> None:
    job_id = published_job(daemon)
    before = http.get(f"/api/v1/jobs/{job_id}/peaks")  # stems made before stemd wrote peaks
    assert before.status_code == 404 and "peaks" in before.json()["detail"]
    folder = with_peaks(daemon)
    answer = http.get(f"/api/v1/jobs/{job_id}/peaks")
    assert answer.status_code == 200 and answer.json() == {"version": 1, "stems": {}}
    assert answer.headers["content-type"] == "application/json"
    secret = daemon.config.state_dir / "secret"
    secret.write_text('{"token": 1}')
    (folder / "peaks.json").unlink()
    os.symlink(secret, folder / "peaks.json")  # the share user's swap
    assert http.get(f"/api/v1/jobs/{job_id}/peaks").status_code == 404
    (folder / "peaks.json").unlink()
    os.mkfifo(folder / "peaks.json")  # a pipe no one writes: would hold a reader for ever
    assert http.get(f"/api/v1/jobs/{job_id}/peaks", timeout=10).status_code == 404


def test_a_stem_swapped_for_a_pipe_is_refused_not_waited_on(
    http: TestClient, daemon: Daemon
) -> None:
    job_id = published_job(daemon)
    stem = daemon.config.outbox / "demucs_unittest/song" / "vocals.wav"
    stem.unlink()
    os.mkfifo(stem)  # a pipe in its place: refused, never waited on
    answer = http.get(f"/api/v1/jobs/{job_id}/stems/vocals", timeout=10)
    assert answer.status_code == 404


@pytest.mark.parametrize("name", ["../../../state/secret", "/etc/hostname", 7])
def test_a_manifest_naming_peaks_outside_its_folder_serves_none(
    http: TestClient, daemon: Daemon, name: object
) -> None:
    job_id = published_job(daemon)
    (daemon.config.state_dir / "secret").write_text('{"token": 1}')
    with_peaks(daemon, name)
    answer = http.get(f"/api/v1/jobs/{job_id}/peaks")
    assert answer.status_code == 404 and b"token" not in answer.content


def test_the_jobs_list_searches_and_pages(http: TestClient, daemon: Daemon) -> None:
    ledger = daemon.ledger
    for n, name in enumerate(["Rock/Song.wav", "jazz/tune.wav", "rock/other_50%.wav"]):
        record = ledger.add_input(daemon.config.inbox / name, name, FileStat(n + 1, 1, 2, 3))
        assert record is not None
        ledger.attach(record.id, f"{n}" * 64, Profile("p", {}, "s"), name)

    def sources(**params: object) -> tuple[list[str], int | None]:
        body = http.get("/api/v1/jobs", params=params).json()
        return [j["source"] for j in body["jobs"]], body["next_before"]

    assert sources(q="ROCK") == (["rock/other_50%.wav", "Rock/Song.wav"], None)
    assert sources(q="50%") == (["rock/other_50%.wav"], None)
    # LIKE's wildcards are plain characters: "o_k" would match "rock", "k%s" "Rock/Song"
    assert sources(q="o_k") == ([], None)
    assert sources(q="k%s") == ([], None)
    first, after = sources(limit=2)
    assert first == ["rock/other_50%.wav", "jazz/tune.wav"] and after is not None
    assert sources(limit=2, before=after) == (["Rock/Song.wav"], None)
