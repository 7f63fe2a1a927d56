"""The container image as a NAS runs it (`make image-test`, after `make image`):
podman, an inbox and outbox bind-mounted from the host and owned by another user
(uid 1234), PUID/PGID/UMASK, the image's health check, the page behind its token,
`podman stop` within the grace, and a second start that keeps what the first made.

Each step is what a user of Synology's Container Manager or Unraid would do; the
figures the closing note asks for (image size, run to ready, stop) are printed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from support.audio import make_tone
from support.published import published_manifests
from support.waiting import wait_until

IMAGE = os.environ.get("STEMD_IMAGE", "localhost/stemd:latest")
OWNER = 1234
# the sandbox forbids raising rlimits: podman's default ulimits make every run fail
CONTAINERS_CONF = Path(__file__).with_name("containers.conf")
GRACE_S = 60.0  # the default config's service.shutdown_grace


def podman(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Nas:
    """The host's side: folders a share user owns, a config folder, a container."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inbox, self.outbox, self.config = root / "inbox", root / "outbox", root / "config"
        for folder in (self.inbox, self.outbox):
            folder.mkdir()
            os.chown(folder, OWNER, OWNER)
        self.config.mkdir()
        self.name = f"stemd-image-test-{os.getpid()}"
        self.port = free_port()

    def volumes(self) -> list[str]:
        return [
            *("-v", f"{self.config}:/config"),
            *("-v", f"{self.inbox}:/inbox"),
            *("-v", f"{self.outbox}:/outbox"),
            *("-e", f"PUID={OWNER}", "-e", f"PGID={OWNER}", "-e", "UMASK=002"),
        ]

    def logs(self) -> str:
        result = podman("logs", self.name)
        return result.stdout + result.stderr

    def drop(self, name: str, source: Path) -> None:
        """A share user copies a file in (as the share's owner, then moved into place)."""
        staging = self.root / f".{name}"
        shutil.copyfile(source, staging)
        os.chown(staging, OWNER, OWNER)
        staging.rename(self.inbox / name)


@pytest.fixture
def nas(tmp_path: Path) -> Iterator[Nas]:
    exists = podman("image", "exists", IMAGE)
    assert exists.returncode == 0, f"no image {IMAGE}: run `make image` first"
    tmp_path.chmod(0o755)  # uid 1234 in the container walks to its mounts
    nas = Nas(tmp_path)
    try:
        yield nas
    finally:
        podman("rm", "--force", "--time", "0", nas.name)


def test_the_image_runs_as_the_shares_user_answers_health_and_keeps_its_state(
    nas: Nas,
) -> None:
    size = podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip()
    print(f"\nimage {IMAGE}: {int(size) / 1e6:.0f} MB")

    # 1. The first start: a default config and a token in /config, owned by PUID; the
    # default model's weights are not there (a NAS without internet, here by
    # HF_HUB_OFFLINE whatever this machine reaches): it says how to get them.
    first = podman("run", "--rm", "-e", "HF_HUB_OFFLINE=1", *nas.volumes(), IMAGE, timeout=300)
    said = first.stdout + first.stderr
    assert first.returncode != 0, said
    assert "wrote the default /config/stemd.yaml" in said
    assert "made an access token in /config/token" in said
    assert "stemd token show" in said and "stemd models fetch htdemucs" in said, said
    config_file, token_file = nas.config / "stemd.yaml", nas.config / "token"
    assert (config_file.stat().st_uid, config_file.stat().st_gid) == (OWNER, OWNER)
    assert token_file.stat().st_uid == OWNER and token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert token not in said  # its path is said, never the token itself

    # 2. The user picks a model (here the built-in test model) and starts it for good.
    settings = yaml.safe_load(config_file.read_text())
    settings["model"] = {"name": "demucs_unittest", "device": "auto"}
    settings["watch"]["settle"] = "1s"
    config_file.write_text(yaml.safe_dump(settings))
    kept_config = config_file.read_bytes()
    started = time.monotonic()
    run = podman(
        "run", "-d", "--name", nas.name, "-p", f"127.0.0.1:{nas.port}:8750",
        *nas.volumes(), IMAGE,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    wait_until(lambda: "stemd ready" in nas.logs(), 180, "the container to be ready")
    print(f"run to ready: {time.monotonic() - started:.1f} s")
    assert "loaded on cpu" in nas.logs()

    # 3. A dropped file: stems owned by the share's user, group-writable.
    nas.drop("song.wav", make_tone(nas.root / "made" / "song.wav", 2.0))
    wait_until(lambda: published_manifests(nas.outbox), 120, "the stems")
    made = [path for path in nas.outbox.rglob("*")]
    assert made and all((p.stat().st_uid, p.stat().st_gid) == (OWNER, OWNER) for p in made)
    assert all(p.stat().st_mode & 0o020 for p in made), "not group-writable"
    # UMASK=002 reaches what stemd writes with no mode of its own (stems have theirs)
    node = nas.config / "state" / "node"
    assert node.stat().st_uid == OWNER and node.stat().st_mode & 0o777 == 0o664

    # 4. The image's health check, and the page on the published port.
    health = podman("healthcheck", "run", nas.name)
    assert health.returncode == 0, health.stdout + health.stderr
    shown = podman("exec", nas.name, "stemd", "token", "show")
    assert shown.stdout.strip() == token
    page = f"http://127.0.0.1:{nas.port}/"
    assert httpx.get(page, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert httpx.get(page).status_code == 401

    # 5. `podman stop`: SIGTERM through tini, a clean exit well within the grace.
    stopping = time.monotonic()
    stop = podman("stop", "--time", str(int(GRACE_S + 30)), nas.name)
    stopped_in = time.monotonic() - stopping
    assert stop.returncode == 0, stop.stderr
    code = podman("inspect", "--format", "{{.State.ExitCode}}", nas.name).stdout.strip()
    assert code == "0", nas.logs()
    assert stopped_in < GRACE_S
    print(f"podman stop: {stopped_in:.1f} s")

    # 6. A second start keeps the config, the token and the ledger: the same audio
    # dropped again under another name is a copy, not a second separation.
    assert podman("start", nas.name).returncode == 0
    wait_until(lambda: nas.logs().count("stemd ready") >= 2, 180, "the second start")
    assert config_file.read_bytes() == kept_config and token_file.read_text().strip() == token
    nas.drop("song again.wav", nas.inbox / "song.wav")
    wait_until(lambda: "song again.wav: same content as" in nas.logs(), 120, "the copy")
    assert nas.logs().count(": separating") == 1


def test_stemd_started_as_root_another_way_refuses_in_one_line() -> None:
    # (no health check: podman would complain, here, that no systemd runs its timer)
    refused = podman("run", "--rm", "--no-healthcheck", "--entrypoint", "stemd", IMAGE, "run")
    assert refused.returncode == 78
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("stemd")]
    assert "will not run as root in its container" in line and "PUID=0" in line
