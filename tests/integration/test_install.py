"""`stemd install-service` into a temporary root, checked with systemd's own tools."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.daemon import stemd

UNIT = "etc/systemd/system/stemd.service"
SERVICE_CONFIG = "etc/stemd/stemd.yaml"
MAX_EXPOSURE = 2.5


def install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return stemd("install-service", "--root", str(root), *extra, cwd=root.parent)


def passwd_entry(root: Path, user: str) -> list[str]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return fields
    raise AssertionError(f"no {user} in {root}/etc/passwd")


def unit_settings(root: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (root / UNIT).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    result = install(root)
    assert result.returncode == 0, result.stderr
    return root


def test_install_writes_the_unit_user_folders_and_a_default_config(installed: Path) -> None:
    root = installed
    for path in (UNIT, SERVICE_CONFIG, "etc/sysusers.d/stemd.conf", "etc/tmpfiles.d/stemd.conf"):
        assert (root / path).is_file(), path

    # The user, made by systemd-sysusers from our sysusers.d file.
    user = passwd_entry(root, "stemd")
    assert user[5] == "/var/lib/stemd" and user[6] == "/usr/sbin/nologin"
    # The folders, made by systemd-tmpfiles: setgid and group-writable, owned by stemd.
    for folder in ("srv/stemd/inbox", "srv/stemd/outbox", "var/cache/stemd"):
        info = (root / folder).stat()
        assert info.st_uid == int(user[2]), folder
    inbox_mode = stat.S_IMODE((root / "srv/stemd/inbox").stat().st_mode)
    assert inbox_mode == 0o2775

    unit = unit_settings(root)
    assert unit["ExecStart"] == [f"{Path(sys.prefix) / 'bin' / 'stemd'} run"]
    assert unit["Type"] == ["notify"] and unit["User"] == ["stemd"]
    assert unit["Environment"][0] == "STEMD_CONFIG=/etc/stemd/stemd.yaml"
    assert unit["RestartPreventExitStatus"] == ["78"] and unit["Restart"] == ["on-failure"]
    assert unit["KillMode"] == ["mixed"] and unit["WatchdogSec"] == ["1min"]
    assert unit["TimeoutStopSec"] == ["90s"]  # the default 60 s grace + 30 s
    assert unit["ReadWritePaths"] == ["-/srv/stemd/inbox -/srv/stemd/outbox"]
    assert unit["StateDirectory"] == ["stemd"] and unit["CacheDirectory"] == ["stemd"]
    assert unit["DevicePolicy"] == ["closed"]
    assert "/dev/nvidiactl rw" in unit["DeviceAllow"]
    assert unit["SystemCallFilter"] == ["@system-service"]
    assert not re.search(r"@[A-Z_]+@", (root / UNIT).read_text()), "a placeholder left"

    # The default config is valid and points the model cache at CacheDirectory.
    config = yaml.safe_load((root / SERVICE_CONFIG).read_text())
    assert config["model"]["cache"] == "/var/cache/stemd"
    check = stemd("-c", str(root / SERVICE_CONFIG), "check", cwd=root)
    assert check.returncode == 0, check.stderr


def test_install_says_what_to_do_next(tmp_path: Path) -> None:
    result = install(tmp_path / "root")
    assert result.returncode == 0, result.stderr
    assert "sudo systemctl enable --now stemd" in result.stdout
    assert "models fetch htdemucs" in result.stdout
    assert f"wrote   {tmp_path / 'root' / UNIT}" in result.stdout


def test_systemd_accepts_the_installed_unit_and_rates_it_well_hardened(installed: Path) -> None:
    unit = installed / UNIT
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr

    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for stemd\.service: (\d+\.\d+)", security.stdout)
    assert match, security.stdout + security.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, security.stdout


def test_systemd_analyze_rejects_a_broken_unit(installed: Path, tmp_path: Path) -> None:
    """The verify test above can fail: a unit systemd cannot run is reported."""
    broken = tmp_path / "stemd.service"
    text = (installed / UNIT).read_text()
    broken.write_text(re.sub(r"ExecStart=\S+", "ExecStart=/nonexistent/stemd", text))
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode != 0 and "/nonexistent/stemd" in verify.stderr


def test_reinstall_keeps_an_edited_config_and_follows_it(installed: Path) -> None:
    config_path = installed / SERVICE_CONFIG
    config = yaml.safe_load(config_path.read_text())
    config["inbox"] = "/data/music/in"
    config["source"] = {"after_success": "move", "archive_dir": "/data/music/done"}
    config["service"] = {"shutdown_grace": "5m"}
    config_path.write_text(yaml.safe_dump(config))

    result = install(installed)
    assert result.returncode == 0, result.stderr
    assert f"kept    {config_path}" in result.stdout
    assert yaml.safe_load(config_path.read_text())["inbox"] == "/data/music/in"
    unit = unit_settings(installed)
    assert unit["TimeoutStopSec"] == ["330s"]
    assert unit["ReadWritePaths"] == ["-/data/music/in -/srv/stemd/outbox -/data/music/done"]
    tmpfiles = (installed / "etc/tmpfiles.d/stemd.conf").read_text()
    assert "/data/music/in " in tmpfiles and (installed / "data/music/in").is_dir()


def test_install_with_c_installs_that_config_and_never_replaces_another(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("inbox: /data/in\noutbox: /data/out\nstate_dir: /data/state\n")
    root = tmp_path / "root"
    result = install(root, "-c", str(mine))
    assert result.returncode == 0, result.stderr
    assert (root / SERVICE_CONFIG).read_text() == mine.read_text()
    assert f"wrote   {root / SERVICE_CONFIG}" in result.stdout
    assert unit_settings(root)["ReadWritePaths"] == ["-/data/in -/data/out -/data/state"]
    assert (root / "data/in").is_dir() and (root / "data/out").is_dir()

    # the same file again is fine; a different one is refused, the installed one kept
    assert install(root, "-c", str(mine)).returncode == 0
    other = tmp_path / "other.yaml"
    other.write_text("inbox: /elsewhere/in\n")
    refused = install(root, "-c", str(other))
    assert refused.returncode == 1
    assert f"{root / SERVICE_CONFIG} exists and differs from {other}" in refused.stderr
    assert (root / SERVICE_CONFIG).read_text() == mine.read_text()


def test_install_warns_of_folders_that_private_tmp_hides(tmp_path: Path) -> None:
    config = tmp_path / "tmp.yaml"
    config.write_text("inbox: /tmp/music-in\noutbox: /var/tmp/music-out\nstate_dir: /data/s\n")
    result = install(tmp_path / "root", "-c", str(config))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "PrivateTmp=yes" in line]
    assert len(warnings) == 2, result.stderr
    assert warnings[0].startswith("stemd: warning: inbox /tmp/music-in is under /tmp")
    assert warnings[1].startswith("stemd: warning: outbox /var/tmp/music-out is under /var/tmp")


def test_install_help_says_which_config_it_installs(tmp_path: Path) -> None:
    result = stemd("install-service", "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "The service reads /etc/stemd/stemd.yaml" in text
    assert "-c CONFIG, --config CONFIG the config to install as /etc/stemd/stemd.yaml" in text


def test_a_relative_path_in_the_service_config_is_refused_by_key(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/stemd").mkdir(parents=True)
    (root / SERVICE_CONFIG).write_text("inbox: ./inbox\nmodel:\n  cache: cache\n")
    result = install(root)
    assert result.returncode == 78
    assert "stemd.yaml: inbox: './inbox': the service needs an absolute path" in result.stderr
    assert "stemd.yaml: model.cache: 'cache'" in result.stderr
    assert not (root / UNIT).exists()


def test_uninstall_removes_what_install_wrote_and_keeps_the_data(installed: Path) -> None:
    ledger = installed / "var/lib/stemd/ledger.sqlite"
    ledger.parent.mkdir(parents=True)
    ledger.write_bytes(b"stand-in")
    result = install(installed, "--uninstall")
    assert result.returncode == 0, result.stderr
    for path in (UNIT, "etc/sysusers.d/stemd.conf", "etc/tmpfiles.d/stemd.conf"):
        assert not (installed / path).exists(), path
        assert f"removed {installed / path}" in result.stdout
    assert (installed / SERVICE_CONFIG).is_file() and ledger.read_bytes() == b"stand-in"
    assert (installed / "srv/stemd/inbox").is_dir()
    assert "kept" in result.stdout


def test_the_systemd_tools_the_installer_needs_are_installed() -> None:
    for tool in ("systemd-analyze", "systemd-sysusers", "systemd-tmpfiles"):
        assert shutil.which(tool), f"{tool} missing: make system-deps installs systemd"
