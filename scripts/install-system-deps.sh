#!/usr/bin/env bash
# Installs the system packages stemd and its tests need, only when missing:
#   ffmpeg            decoding any input, encoding flac stems
#   libsystemd-dev    headers to build systemd-python
#   pkg-config        lets systemd-python's build find them
#   systemd           the journald binary and journalctl the tests read back;
#                     systemd-analyze, -sysusers, -tmpfiles for install-service
#   bindfs, fuse      a FUSE mount standing in for a network share (tests)
#   util-linux        unshare and setpriv (tests)
#   chromium, chromium-driver
#                     the browser test of the web page (selenium drives Debian's
#                     chromedriver; nothing is downloaded)
#   postgresql        the shared ledger's tests start a private server (initdb,
#                     pg_ctl) in a temp folder; nothing system-wide is started
set -euo pipefail

missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists libsystemd 2>/dev/null || missing+=(libsystemd-dev)
command -v journalctl >/dev/null 2>&1 || missing+=(systemd)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
command -v bindfs >/dev/null 2>&1 || missing+=(bindfs)
command -v fusermount >/dev/null 2>&1 || missing+=(fuse)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
# de-duplicate
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "stemd: installing system packages: ${missing[*]}"

if ! command -v apt-get >/dev/null 2>&1; then
    echo "stemd: apt-get not found; install these with your package manager: ${missing[*]}" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "stemd: not root and no sudo; as root run: apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
