#!/usr/bin/env bash
# The one Python install of the project (make run, make test, CI): a virtual
# environment holding exactly constraints/lock.txt.
#
#   scripts/install-venv.sh VENV
#
# 1. the installer and the build backend from the lock (pip, setuptools), hashes checked;
# 2. every locked distribution at its version, each file checked against its hash, none
#    of their dependencies resolved again (the lock is the whole closure); the one sdist
#    (systemd-python) is built with the locked setuptools, not a newer one fetched into
#    an isolated build environment (pip ignores constraints and hashes there);
# 3. torch: the pin of constraints/ci.txt (the CPU build on CI), unless TORCH=keep and a
#    torch is already installed (a CUDA build you put there yourself: README);
#    TORCH_INDEX adds an index to find it on (https://download.pytorch.org/whl/cpu).
#    Pinned by version only: CI takes the machine's local CPU wheel, users bring their
#    own build, so no one hash fits. Where pip finds only the CUDA build, its runtime
#    packages come with it;
# 4. stemd itself, editable, built with the locked setuptools;
# 5. pip check: the versions fit together.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:?usage: scripts/install-venv.sh VENV}
PYTHON=${PYTHON:-python3}
LOCK=constraints/lock.txt

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --quiet)

tools=$(mktemp)
trap 'rm -f "$tools"' EXIT
# the blocks of pip and setuptools: their pin line and its --hash lines
awk '/^[^ #]/ { keep = ($0 ~ /^(pip|setuptools)==/) } keep' "$LOCK" >"$tools"
"${pip[@]}" install --require-hashes --no-deps -r "$tools"
"${pip[@]}" install --require-hashes --no-deps --no-build-isolation -r "$LOCK"

if [ "${TORCH:-}" = keep ] && "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    echo "stemd: keeping the installed torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
else
    torch_index=()
    if [ -n "${TORCH_INDEX:-}" ]; then
        torch_index=(--extra-index-url "$TORCH_INDEX")
    fi
    "${pip[@]}" install ${torch_index[@]+"${torch_index[@]}"} -r constraints/ci.txt
fi

"${pip[@]}" install --no-deps --no-build-isolation --editable .
"${pip[@]}" check
