#!/usr/bin/env bash
# `make lock`: resolve pyproject's ranges (with the dev extra) and constraints/lock.in
# into constraints/lock.txt, every distribution of the install at an exact version with
# the hashes of all its files. torch is resolved with the rest (so its own needs are
# locked) but left out of the file: CI pins it in constraints/ci.txt, users bring theirs.
#
# uv resolves; it reads neither pip's configuration nor its certificates, so the ones
# pip uses here are handed on: find-links (where the CPU torch wheel lies) and the CA
# bundle a TLS-inspecting proxy needs.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
PIP=${PIP:-.venv/bin/pip}

args=()
find_links=${PIP_FIND_LINKS:-$("$PIP" config get global.find-links 2>/dev/null || true)}
for link in $find_links; do
    args+=(--find-links "$link")
done
if [ -n "${TORCH_INDEX:-}" ]; then
    # e.g. https://download.pytorch.org/whl/cpu where no local CPU wheel exists
    args+=(--extra-index-url "$TORCH_INDEX" --index-strategy unsafe-best-match)
fi
cert=${SSL_CERT_FILE:-${PIP_CERT:-$("$PIP" config get global.cert 2>/dev/null || true)}}
if [ -n "$cert" ]; then
    export SSL_CERT_FILE=$cert
fi

# Linux and the Python of Debian 12 (bookworm) and the container image; the hashes
# cover every file of each pinned release, so other architectures install from it too.
"$UV" pip compile pyproject.toml constraints/lock.in --extra dev \
    --constraint constraints/ci.txt --no-emit-package torch \
    --python-version 3.11 --python-platform linux \
    --generate-hashes --custom-compile-command "make lock" \
    "${args[@]}" --output-file constraints/lock.txt "$@"
