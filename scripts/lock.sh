#!/usr/bin/env bash
# `make lock` (UPGRADE=1 for the newest releases): resolve pyproject's ranges (with
# the dev extra) and constraints/lock.in into constraints/lock.txt (and its runtime
# part, without the dev extra, into constraints/lock-runtime.txt, for the image), every distribution
# of the install at an exact version with the hashes of all its files. torch is resolved with the rest (so its own needs are
# locked) but left out of the file: CI pins it in constraints/ci.txt, users bring theirs.
#
# uv resolves; it reads neither pip's configuration nor its certificates, so the ones
# pip uses here are handed on: find-links (where the CPU torch wheel lies) and the CA
# bundle a TLS-inspecting proxy needs. Resolved against the CUDA build instead, the
# lock would pin its nvidia-* runtime: that is refused below.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
PIP=${PIP:-.venv/bin/pip}

args=()
find_links=${PIP_FIND_LINKS:-$("$PIP" config get global.find-links 2>/dev/null || true)}
read -r -a links <<<"$find_links"
for link in ${links[@]+"${links[@]}"}; do
    args+=(--find-links "$link")
done
cert=${SSL_CERT_FILE:-${PIP_CERT:-$("$PIP" config get global.cert 2>/dev/null || true)}}
if [ -n "$cert" ]; then
    export SSL_CERT_FILE=$cert
fi

# Linux and the Python of Debian 12 (bookworm), as on CI; the hashes cover every file
# of each pinned release (other platforms' wheels too, where a release has them).
# Pins already in the lock are kept where they still fit (uv reads the output file
# first); UPGRADE=1 takes the newest releases the ranges allow.
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cp constraints/lock.txt "$out" 2>/dev/null || true
if [ -n "${UPGRADE:-}" ]; then
    args+=(--upgrade)
fi
"$UV" pip compile pyproject.toml constraints/lock.in --extra dev \
    --constraint constraints/ci.txt --no-emit-package torch \
    --python-version 3.11 --python-platform linux \
    --generate-hashes --custom-compile-command "make lock" \
    ${args[@]+"${args[@]}"} --output-file "$out" "$@"
if grep -Eq '^(nvidia-|triton==)' "$out"; then
    echo "make lock: torch resolved to its CUDA build (nvidia-* in the lock): put the CPU" \
        "wheel where pip finds it (PIP_FIND_LINKS) and run make lock again" >&2
    exit 1
fi
mv "$out" constraints/lock.txt

# The runtime part of the same lock (no dev extra: no test or lint tools), for the
# container image: the same versions and hashes, as constraints/lock.txt pins them.
"$UV" pip compile pyproject.toml constraints/lock.in \
    --constraint constraints/lock.txt --constraint constraints/ci.txt --no-emit-package torch \
    --python-version 3.11 --python-platform linux \
    --generate-hashes --custom-compile-command "make lock" \
    ${args[@]+"${args[@]}"} --output-file constraints/lock-runtime.txt
