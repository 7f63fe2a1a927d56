"""`stemd install-service`: put stemd under systemd, and take it away again.

Renders the templates in the checkout's `packaging/` folder with this
installation's interpreter and the service config's folders, writes them under
`root` (the real `/` or a staging folder), creates the user and folders with
systemd-sysusers and systemd-tmpfiles, and says what to do next. Nothing here
starts the service: the admin enables it after fetching a model.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from stemd.config import Config, load_config
from stemd.errors import StemdError

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
SERVICE_CONFIG = PurePosixPath("/etc/stemd/stemd.yaml")
UNIT = PurePosixPath("/etc/systemd/system/stemd.service")
SYSUSERS = PurePosixPath("/etc/sysusers.d/stemd.conf")
TMPFILES = PurePosixPath("/etc/tmpfiles.d/stemd.conf")
STATE_DIRECTORY = PurePosixPath("/var/lib/stemd")  # StateDirectory=stemd
CACHE_DIRECTORY = PurePosixPath("/var/cache/stemd")  # CacheDirectory=stemd
# Beyond shutdown_grace: time to requeue the job, close the ledger and exit.
STOP_MARGIN_S = 30
# ProtectHome=yes hides these; a path below them needs ProtectHome=read-only.
HOME_ROOTS = (Path("/home"), Path("/root"), Path("/run/user"))


@dataclass
class InstallReport:
    written: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)


def _under(root: Path, path: PurePosixPath) -> Path:
    return root / path.relative_to("/")


def _packaging_file(name: str) -> str:
    path = PACKAGING / name
    if not path.is_file():
        raise StemdError(
            f"{path} is missing: install-service uses the packaging/ folder of stemd's "
            "source checkout; run it with the stemd of a checkout's .venv (make run installs one)"
        )
    return path.read_text()


def stemd_command() -> Path:
    """The stemd executable of this installation (its virtual environment)."""
    script = Path(sys.prefix) / "bin" / "stemd"
    if script.is_file() and os.access(script, os.X_OK):
        return script
    raise StemdError(
        f"{script} not found: install stemd into a virtual environment first (make run)"
    )


def read_write_paths(config: Config) -> list[Path]:
    """Every folder the service writes outside StateDirectory/CacheDirectory."""
    paths = [config.inbox, config.outbox]
    paths += [p for p in (config.source.archive_dir, config.source.failed_dir) if p]
    if config.state_dir != Path(STATE_DIRECTORY):
        paths.append(config.state_dir)
    if config.model.cache is not None and config.model.cache != Path(CACHE_DIRECTORY):
        paths.append(config.model.cache)
    return list(dict.fromkeys(paths))


def _is_under_home(path: Path) -> bool:
    return any(path == home or home in path.parents for home in HOME_ROOTS)


def _unreachable(path: Path) -> Path | None:
    """The first folder on the way to `path` that other users cannot enter."""
    for folder in reversed(path.parents):
        try:
            mode = folder.stat().st_mode
        except OSError:
            return folder
        if not mode & stat.S_IXOTH:
            return folder
    return None


def render_unit(config: Config, command: Path, config_path: PurePosixPath) -> tuple[str, bool]:
    """The unit text, and whether something lives below /home or /root."""
    writable = read_write_paths(config)
    interpreter = Path(os.path.realpath(sys.executable))
    in_home = any(_is_under_home(p) for p in [*writable, command, interpreter])
    text = _packaging_file("systemd/stemd.service")
    fields = {
        "@EXEC_START@": str(command),
        "@CONFIG@": str(config_path),
        "@DOCS@": str(PACKAGING.parent / "README.md"),
        # '-': a folder that is missing (a share not mounted yet) must not stop the unit
        "@READ_WRITE_PATHS@": " ".join(f"-{p}" for p in writable),
        "@TIMEOUT_STOP@": f"{int(config.service.shutdown_grace) + STOP_MARGIN_S}s",
        "@PROTECT_HOME@": "read-only" if in_home else "yes",
    }
    for placeholder, value in fields.items():
        text = text.replace(placeholder, value)
    return text, in_home


def render_tmpfiles(config: Config) -> str:
    text = _packaging_file("stemd.tmpfiles")
    return text.replace("@INBOX@", str(config.inbox)).replace("@OUTBOX@", str(config.outbox))


def _write(path: Path, text: str, report: InstallReport) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.new")
    temp.write_text(text)
    temp.chmod(0o644)
    temp.replace(path)
    report.written.append(path)


def _run(command: list[str], report: InstallReport) -> None:
    tool = shutil.which(command[0])
    if tool is None:
        report.warnings.append(f"{command[0]} not found; run by hand: {' '.join(command)}")
        return
    result = subprocess.run(
        [tool, *command[1:]], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise StemdError(f"{' '.join(command)} failed: {result.stderr.strip()}")


def _systemd_running(root: Path) -> bool:
    return root == Path("/") and Path("/run/systemd/system").is_dir()


# PrivateTmp=yes gives the service its own /tmp and /var/tmp: folders there are
# not the ones the admin sees.
PRIVATE_TMP = (Path("/tmp"), Path("/var/tmp"))


def _place_config(root: Path, given: Path | None, report: InstallReport) -> Path:
    """The service config: the one given with -c (copied into place when none is
    there), else the one in place, else the packaged example."""
    config_file = _under(root, SERVICE_CONFIG)
    if given is None:
        if config_file.exists():
            report.kept.append(config_file)
        else:
            _write(config_file, _packaging_file("stemd.yaml"), report)
        return config_file
    load_config(given, absolute_paths=True)  # refused by key before anything is written
    text = given.read_text()
    if not config_file.exists():
        _write(config_file, text, report)
    elif config_file.read_text() == text:
        report.kept.append(config_file)
    else:
        raise StemdError(
            f"{config_file} exists and differs from {given}: install-service will not "
            f"replace it. Edit {config_file} (then `systemctl reload stemd`), or move it "
            "aside and run install-service -c again"
        )
    return config_file


def _private_tmp_warnings(config: Config) -> list[str]:
    folders = {
        "inbox": config.inbox,
        "outbox": config.outbox,
        "state_dir": config.state_dir,
        "source.archive_dir": config.source.archive_dir,
        "source.failed_dir": config.source.failed_dir,
        "model.cache": config.model.cache,
    }
    return [
        f"{key} {path} is under {tmp}: the unit's PrivateTmp=yes gives the service a "
        f"private {tmp}, so it would not see (or write) this folder; move it elsewhere"
        for key, path in folders.items()
        if path is not None
        for tmp in PRIVATE_TMP
        if path == tmp or tmp in path.parents
    ]


def install(root: Path, given_config: Path | None = None) -> InstallReport:
    """Install for `given_config` (stemd -c), or the config already in place."""
    report = InstallReport()
    command = stemd_command()
    config_file = _place_config(root, given_config, report)
    config = load_config(config_file, absolute_paths=True)
    report.warnings += _private_tmp_warnings(config)

    unit, in_home = render_unit(config, command, SERVICE_CONFIG)
    _write(_under(root, UNIT), unit, report)
    _write(_under(root, SYSUSERS), _packaging_file("stemd.sysusers"), report)
    _write(_under(root, TMPFILES), render_tmpfiles(config), report)

    on_root = [] if root == Path("/") else [f"--root={root}"]
    _run(["systemd-sysusers", *on_root, str(_under(root, SYSUSERS))], report)
    _run(["systemd-tmpfiles", *on_root, "--create", str(_under(root, TMPFILES))], report)
    if _systemd_running(root):
        _run(["systemctl", "daemon-reload"], report)

    if in_home:
        report.warnings.append(
            "stemd or its folders live below /home or /root: the unit uses "
            "ProtectHome=read-only instead of yes. /opt/stemd is a better home for the checkout."
        )
    for needed in (command, Path(os.path.realpath(sys.executable))):
        blocked = _unreachable(needed)
        if blocked is not None:
            report.warnings.append(
                f"the stemd user cannot reach {needed}: {blocked} is closed to other users. "
                "Put the checkout and its Python where every user can read them "
                "(e.g. /opt/stemd with a system Python), then run install-service again."
            )
    report.next_steps = [
        f"edit {SERVICE_CONFIG} (inbox, outbox, model, output.group)",
        f"sudo -u stemd {command} -c {SERVICE_CONFIG} models fetch {config.model.name}"
        "   # weights into model.cache, once",
        "sudo systemctl enable --now stemd",
        "journalctl -u stemd -f   # and `systemctl reload stemd` after config edits",
    ]
    return report


def uninstall(root: Path) -> InstallReport:
    report = InstallReport()
    if _systemd_running(root):
        subprocess.run(
            ["systemctl", "disable", "--now", "stemd"],
            capture_output=True,
            timeout=120,
            check=False,
        )
    for path in (UNIT, SYSUSERS, TMPFILES):
        target = _under(root, path)
        if target.exists():
            target.unlink()
            report.removed.append(target)
    if _systemd_running(root):
        _run(["systemctl", "daemon-reload"], report)
    report.kept = [
        _under(root, path) for path in (SERVICE_CONFIG, STATE_DIRECTORY, CACHE_DIRECTORY)
    ]
    report.next_steps = [
        "the inbox, the outbox and the stemd user are kept too",
        "to remove the rest: rm -r /etc/stemd /var/lib/stemd /var/cache/stemd; userdel stemd",
    ]
    return report
