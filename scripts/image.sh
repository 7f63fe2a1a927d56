#!/usr/bin/env bash
# `make image`: stemd's container image, the CPU build by default, as stemd:latest
# (podman names it localhost/stemd:latest).
#
#   TORCH=cpu|cuda   which torch the image carries (default cpu)
#   TAG              the image's name (default stemd:latest; stemd:cuda for TORCH=cuda)
#
# Builds with podman (docker works the same way from the Containerfile). The Debian
# base is pulled, or where no registry answers made with debootstrap from the
# Debian mirror (DEBIAN_MIRROR, default deb.debian.org), imported as
# debian:bookworm-slim (its tarball kept in ~/.cache/stemd for a week). pip's own configuration on this
# machine reaches the build only as what it points to: its find-links folder
# mounted read-only (CI's local torch wheel), its CA file as a build secret (a
# proxy that re-signs TLS); nothing of it is baked into the image.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=${TORCH:-cpu}
TAG=${TAG:-$([ "$TORCH" = cuda ] && echo stemd:cuda || echo stemd:latest)}
BASE=debian:bookworm-slim
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/stemd

bash scripts/install-image-deps.sh

# the base: pulled, or made with debootstrap where no registry answers (kept a
# week in ~/.cache/stemd, then made afresh); apt inside the build then reads
# Debian's own sources, security updates included
mkdir -p "$CACHE"
tarball="$CACHE/debian-bookworm-minbase.tar"
find "$CACHE" -name "$(basename "$tarball")" -mtime +7 -delete
if ! podman image exists "$BASE"; then
    if ! pulled=$(timeout 60 podman pull --quiet "docker.io/library/$BASE" 2>&1); then
        echo "stemd: cannot pull $BASE (${pulled##*$'\n'}); making it with debootstrap"
        if [ ! -s "$tarball" ]; then
            mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
            rootfs=$(mktemp -d)
            trap 'rm -rf "$rootfs"' EXIT
            debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
            rm -f "$rootfs/etc/apt/sources.list"
            cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
            rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
            tar -C "$rootfs" -c --numeric-owner -f "$tarball.part" .
            mv "$tarball.part" "$tarball"
        fi
        podman import --quiet "$tarball" "$BASE" >/dev/null
    fi
fi

args=(--format docker --pull=never --file packaging/container/Containerfile --tag "$TAG"
    --build-arg "TORCH=$TORCH")
if [ "$(id -u)" = 0 ] && [ -z "${container:-}" ]; then
    args+=(--isolation chroot) # no nested namespaces needed: builds where runc cannot
fi
# a key of pip's configuration on this machine (its files or PIP_* variables)
pip_conf() {
    { python3 -m pip config list 2>/dev/null || true; } |
        sed -n "s/^\(global\|install\|:env:\)\.$1='\([^' ]*\).*'\$/\2/p" | head -1
}
find_links=$(pip_conf find-links)
if [ -n "$find_links" ] && [ -d "$find_links" ]; then
    args+=(--volume "$find_links:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels)
    if compgen -G "$find_links/torch-*" >/dev/null; then
        args+=(--build-arg TORCH_INDEX=) # torch is there: no index to wait for
    fi
fi
cert=$(pip_conf cert)
if [ -n "$cert" ] && [ -f "$cert" ]; then
    args+=(--secret "id=pipcert,src=$cert")
fi
started=$(date +%s)
podman build "${args[@]}" .
echo "stemd: built $TAG in $(($(date +%s) - started)) s;" \
    "$(podman image inspect --format '{{.Size}}' "$TAG" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
