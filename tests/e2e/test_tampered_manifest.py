"""A stemd.json on the share is written by whoever may write the share (0664 with the
README's group advice). A share user who edits one to name files outside its folder,
or swaps a stem for a link, and drops the same audio again, must get nothing of
what those names point at: neither copied into the outbox nor served over HTTP.
The content is separated again instead, and the stem URLs answer 404.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx

from support.audio import make_tone
from support.daemon import Daemon, service_config
from support.http import EPHEMERAL, client, http_url
from support.published import published
from support.waiting import wait_until

MODEL_DIR = "demucs_unittest"
SECRET = b"TOP SECRET: the HTTP token, say\n"


def job_of(http: httpx.Client, source: str) -> dict[str, object]:
    jobs = http.get("/api/v1/jobs", params={"limit": 100}).json()["jobs"]
    (job,) = [job for job in jobs if job["source"] == source]
    return dict(job)


def secret_anywhere(outbox: Path) -> list[Path]:
    found = []
    for folder, _dirs, files in os.walk(outbox):
        for name in files:
            path = Path(folder, name)
            if not path.is_symlink() and SECRET in path.read_bytes():
                found.append(path)
    return found


def test_a_manifest_naming_files_outside_its_folder_gives_nothing_away(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    outbox = tmp_path / "outbox"
    daemon = Daemon(service_config(tmp_path, http=EPHEMERAL), tmp_path).start()
    try:
        daemon.wait_ready()
        http = client(http_url(daemon))
        song = make_tone(tmp_path / "staging" / "song.wav", 2.0)
        shutil.copyfile(song, tmp_path / "inbox" / "song.wav")
        first = outbox / MODEL_DIR / "song"
        wait_until(lambda: published(first), 60, "song.wav")

        # The share user's edit: one name absolute, one climbing out of the folder.
        manifest_path = first / "stemd.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["stems"]["vocals"] = str(secret)
        manifest["stems"]["drums"] = os.path.relpath(secret, first)
        manifest_path.write_text(json.dumps(manifest))

        # Over HTTP: the tampered job's stems are not served.
        job = job_of(http, "song.wav")
        for stem in ("vocals", "drums", "bass"):
            answer = http.get(f"/api/v1/jobs/{job['id']}/stems/{stem}")
            assert answer.status_code == 404 and SECRET not in answer.content
        assert http.get(f"/api/v1/jobs/{job['id']}/stems.zip").status_code == 404

        # The same audio again: its copy would have been made from those names.
        shutil.copyfile(song, tmp_path / "inbox" / "again.wav")
        second = outbox / MODEL_DIR / "again"
        wait_until(lambda: published(second), 60, "again.wav, separated anew")
        assert secret_anywhere(outbox) == []
        again = json.loads((second / "stemd.json").read_text())
        assert again.get("duplicate_of") is None  # separated, not copied
        assert daemon.log().count("again.wav: separating (attempt") == 1
        assert "are gone or their stemd.json is not stemd's" in daemon.log()
        for name in again["stems"].values():
            assert (second / name).read_bytes()[:4] == b"RIFF"

        # A stem swapped for a link to the secret after publishing: refused too.
        vocals = second / again["stems"]["vocals"]
        vocals.unlink()
        vocals.symlink_to(secret)
        job = job_of(http, "again.wav")
        answer = http.get(f"/api/v1/jobs/{job['id']}/stems/vocals")
        assert answer.status_code == 404 and SECRET not in answer.content
        zipped = http.get(f"/api/v1/jobs/{job['id']}/stems.zip")
        assert zipped.status_code == 404 and SECRET not in zipped.content
        assert daemon.stop() == 0
    finally:
        daemon.kill()
