#!/usr/bin/env bash
# Wheels for `make gpu-check` on a bare CUDA machine, downloaded here into .whl/.
#
# That machine's python3 (3.12) has torch with CUDA, numpy, PyYAML, einops and
# tqdm, but none of stemd's other packages, and it cannot download. This takes
# the versions this checkout's .venv runs (so the check runs what the tests
# ran), as wheels for CPython 3.12 on x86-64 Linux, without their dependencies
# (each one stemd needs is named here). On the GPU machine:
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site make gpu-check PYTHON=python3
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NEEDED=(demucs julius lameenc sphn pydantic pydantic_core annotated-types typing-inspection
        typing_extensions watchdog)

specs=()
for name in "${NEEDED[@]}"; do
    version=$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    if [[ -z "$version" ]]; then
        echo "gpu-wheels: $name is not installed in $PY's environment; run make test first" >&2
        exit 1
    fi
    specs+=("$name==$version")
done

rm -rf .whl
mkdir -p .whl
# pip matches manylinux_2_N exactly: offer every glibc the GPU machine can run
platforms=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for n in $(seq 17 39); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "${specs[@]}" 2> >(grep -v "is ignored" >&2)
du -sh .whl
ls .whl
