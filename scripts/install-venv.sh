#!/usr/bin/env bash
# The one Python install of the project (make run, make test, CI; the container image
# does the same steps): a virtual environment holding exactly constraints/lock.txt.
#
#   scripts/install-venv.sh VENV
#
# 1. every locked distribution at its version, each file checked against its hash, none
#    of their dependencies resolved again (the lock is the whole closure);
# 2. torch: the pin of constraints/ci.txt (the CPU build on CI), unless TORCH=keep and a
#    torch is already installed (a CUDA build you put there yourself: README);
#    TORCH_INDEX adds an index to find it on (https://download.pytorch.org/whl/cpu);
# 3. stemd itself, editable, built with the locked setuptools (no build isolation,
#    so no unlocked build tool is fetched);
# 4. pip check: the versions fit together.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:?usage: scripts/install-venv.sh VENV}
PYTHON=${PYTHON:-python3}

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --quiet)

# An sdist in the lock (systemd-python) is built in an isolated environment: the lock
# as a constraint pins the setuptools it gets there as well.
PIP_CONSTRAINT=constraints/lock.txt "${pip[@]}" install --require-hashes --no-deps \
    -r constraints/lock.txt

if [ "${TORCH:-}" = keep ] && "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    echo "stemd: keeping the installed torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
else
    torch_index=()
    if [ -n "${TORCH_INDEX:-}" ]; then
        torch_index=(--extra-index-url "$TORCH_INDEX")
    fi
    "${pip[@]}" install --no-deps "${torch_index[@]}" -r constraints/ci.txt
fi

"${pip[@]}" install --no-deps --no-build-isolation --editable .
"${pip[@]}" check
