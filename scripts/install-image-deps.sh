#!/usr/bin/env bash
# What `make image` and `make image-test` need from Debian, only when missing:
#   podman           builds and runs the image (no daemon, no registry needed)
#   debootstrap      the Debian base where no registry answers
#   runc, uidmap, slirp4netns, fuse-overlayfs
#                    podman's runtime, user namespaces, rootless network, storage
set -euo pipefail
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v newuidmap >/dev/null 2>&1 || missing+=(uidmap)
command -v slirp4netns >/dev/null 2>&1 || missing+=(slirp4netns)
command -v fuse-overlayfs >/dev/null 2>&1 || missing+=(fuse-overlayfs)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "stemd: installing system packages for the image: ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
    echo "stemd: not root; as root run: apt-get install ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
