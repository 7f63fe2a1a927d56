"""The project installs exactly its lock: constraints/lock.txt against `pip freeze`.

A fresh install today must be the install CI passed with, not whatever was released
since: the venv this suite runs in was made by scripts/install-venv.sh from the lock.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "constraints" / "lock.txt"
RUNTIME_LOCK = ROOT / "constraints" / "lock-runtime.txt"
LOCKDIFF = ROOT / "scripts" / "lockdiff.py"


def lockdiff() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lockdiff", LOCKDIFF)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_environment_holds_exactly_the_lock() -> None:
    run = subprocess.run(
        [sys.executable, str(LOCKDIFF), str(LOCK), sys.executable],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 difference(s)" in run.stdout


def test_every_locked_release_carries_hashes() -> None:
    """pip's hash-checking mode needs a hash on every requirement of the file."""
    text = LOCK.read_text(encoding="utf-8")
    entries = [block for block in text.split("\n") if block and block[0].isalnum()]
    assert len(entries) > 50  # the whole closure, not the direct dependencies alone
    for entry in entries:
        assert entry.endswith("\\"), f"{entry} has no --hash in {LOCK.name}"
    assert "torch==" not in text  # users bring their own build; CI's is in ci.txt


def test_any_difference_from_the_lock_is_named() -> None:
    tool = lockdiff()
    locked = tool.pins(["Jinja2==3.1.6 \\", "    --hash=sha256:00", "numpy==2.4.6", "# a comment"])
    assert locked == {"jinja2": "3.1.6", "numpy": "2.4.6"}

    installed = {
        "jinja2": "3.1.6",  # the same (names compared in PEP 503's normal form)
        "numpy": "2.5.0",  # moved
        "requests": "2.34.2",  # brought in by something unlocked
        "torch": "2.13.0+cu126",  # the user's own build
        "nvidia-cublas-cu12": "12.6.4",  # what only that build needs
    }
    aside = {"torch", "nvidia-cublas-cu12", "jinja2"}
    assert tool.differences(locked, installed, aside) == [
        "numpy: locked 2.4.6, installed 2.5.0",
        "not in the lock: requests==2.34.2",
    ]
    assert tool.differences({**locked, "uv": "0.13.9"}, {**locked}, set()) == [
        "locked but not installed: uv==0.13.9"
    ]


def blocks(path: Path) -> dict[str, set[str]]:
    """name==version -> the hashes of its files, for each pin of a lock file."""
    found: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and line[0].isalnum():
            current = found.setdefault(line.split()[0].lower(), set())
        elif current is not None and "--hash=" in line:
            current.add(line.split("--hash=")[1].strip(" \\"))
    return found


def test_the_images_runtime_lock_is_the_lock_without_the_dev_tools() -> None:
    """The container image installs constraints/lock-runtime.txt: every pin in it is
    the lock's, at the same version with the same file hashes, and the test and lint
    tools are not in it (make lock writes both files at once)."""
    full, runtime = blocks(LOCK), blocks(RUNTIME_LOCK)
    assert runtime, "an empty runtime lock"
    for pin, hashes in runtime.items():
        assert pin in full, f"{pin} of {RUNTIME_LOCK.name} is not in {LOCK.name}"
        assert hashes == full[pin], f"{pin}: other hashes than {LOCK.name}'s"
    names = {pin.split("==")[0] for pin in runtime}
    assert {"demucs", "watchdog", "pyyaml", "systemd-python", "fastapi", "pip"} <= names
    assert not names & {"pytest", "mypy", "ruff", "selenium", "uv"}
