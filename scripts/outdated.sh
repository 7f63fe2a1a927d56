#!/usr/bin/env bash
# `make outdated`: is an upstream release about to break stemd? Builds .venv-outdated
# from the newest releases pyproject's ranges allow (torch stays CI's pin: the lock
# leaves it out too), lists what moved against constraints/lock.txt, then runs the
# whole suite and lint there. Exit status: the suite's.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-outdated
PYTHON=${PYTHON:-python3}

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet --upgrade --upgrade-strategy eager \
    --constraint constraints/ci.txt --editable '.[dev]'

echo "== moved since constraints/lock.txt (locked -> newest)"
"$VENV/bin/python" scripts/lockdiff.py constraints/lock.txt "$VENV/bin/python" || true

echo "== the suite against the newest releases"
status=0
# the lock test asserts this venv is the lock, which it is not meant to be here
"$VENV/bin/python" -m pytest -n 2 --dist loadfile -q \
    --deselect tests/integration/test_lock.py::test_the_environment_holds_exactly_the_lock \
    || status=$?
"$VENV/bin/ruff" check daemon tests || status=$?
"$VENV/bin/ruff" format --check daemon tests || status=$?
"$VENV/bin/mypy" || status=$?
if [ "$status" -eq 0 ]; then
    echo "outdated: the suite passes on the newest releases; \`make lock\` takes them in"
else
    echo "outdated: the suite fails on the newest releases (exit $status): see above"
fi
exit "$status"
