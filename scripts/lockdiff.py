#!/usr/bin/env python3
"""Compare an environment's `pip freeze` with constraints/lock.txt.

    scripts/lockdiff.py LOCK PYTHON

PYTHON is the interpreter of the environment to compare (a venv's bin/python). torch
is set aside, with the distributions only it needs (a CUDA build's nvidia-* runtime,
when a user brought one): the lock leaves torch to the user. Prints one line per
difference and exits 1 when there is any, 0 when the environment is exactly the lock.
Standard library only: `make outdated` runs it before anything else is installed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")

# Run inside the compared environment: which distributions torch needs, transitively.
TORCH_CLOSURE = r"""
import importlib.metadata as md, json, re
def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
seen, todo = set(), ["torch"]
while todo:
    name = todo.pop()
    if name in seen:
        continue
    seen.add(name)
    try:
        requires = md.requires(name) or []
    except md.PackageNotFoundError:
        continue
    for req in requires:
        if "extra ==" in req:
            continue
        todo.append(norm(re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0]))
print(json.dumps(sorted(seen)))
"""


def canonical(name: str) -> str:
    """PEP 503's normal form: `Jinja2` and `typing_extensions` as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lines: list[str]) -> dict[str, str]:
    """name -> version of every `name==version` line (hashes and comments skipped)."""
    found: dict[str, str] = {}
    for line in lines:
        match = PINNED.match(line.strip())
        if match:
            found[canonical(match.group(1))] = match.group(2)
    return found


def frozen(python: str) -> dict[str, str]:
    """`pip freeze --all` of that interpreter's environment, without editable installs."""
    out = subprocess.run(
        [python, "-m", "pip", "freeze", "--all", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return pins(out.splitlines())


def torch_closure(python: str) -> set[str]:
    out = subprocess.run(
        [python, "-c", TORCH_CLOSURE], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return set(json.loads(out))


def differences(locked: dict[str, str], installed: dict[str, str], aside: set[str]) -> list[str]:
    """One line per distribution where the environment is not the lock."""
    lines = []
    for name in sorted(locked.keys() | installed.keys()):
        want, have = locked.get(name), installed.get(name)
        if want == have:
            continue
        if want is None:
            if name not in aside:
                lines.append(f"not in the lock: {name}=={have}")
        elif have is None:
            lines.append(f"locked but not installed: {name}=={want}")
        else:
            lines.append(f"{name}: locked {want}, installed {have}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    lock, python = argv[1], argv[2]
    locked = pins(Path(lock).read_text(encoding="utf-8").splitlines())
    installed = frozen(python)
    lines = differences(locked, installed, torch_closure(python) | {"torch"})
    for line in lines:
        print(line)
    print(f"{len(lines)} difference(s) between {lock} and the environment of {python}")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
