#!/bin/sh
# stemd's container entrypoint, run by tini as PID 1's child.
#
# As root (the default): the user from PUID/PGID (default 1000:1000), the time zone
# from TZ, ownership of /config fixed on every start (never of the media volumes),
# then this script again as that user (setpriv, no new privileges). As that user: UMASK (default 022) applied, /config/stemd.yaml
# written on the first start (never over one), a token made in /config/token when
# the config names it and it is missing, then `stemd ARGS` (default: run).
# PUID=0 runs stemd as root, on purpose only: stemd refuses root otherwise.
set -eu

PUID=${PUID:-1000}
PGID=${PGID:-1000}
UMASK=${UMASK:-022}
export PUID PGID UMASK

fail() {
    echo "stemd-entrypoint: $*" >&2
    exit 78
}

case "$PUID" in '' | *[!0-9]*) fail "PUID must be a number (a user id), not '$PUID'" ;; esac
case "$PGID" in '' | *[!0-9]*) fail "PGID must be a number (a group id), not '$PGID'" ;; esac
case "$UMASK" in '' | *[!0-7]* | ?????*) fail "UMASK must be octal, e.g. 022 or 002, not '$UMASK'" ;; esac

# root drops to PUID:PGID; the marker only ends the loop when PUID=0 keeps root
if [ "$(id -u)" = 0 ] && { [ "$PUID" != 0 ] || [ "${STEMD_AS_USER:-}" != 1 ]; }; then
    if [ -n "${TZ:-}" ]; then
        [ -f "/usr/share/zoneinfo/$TZ" ] || fail "TZ=$TZ is no time zone (e.g. Europe/Berlin)"
        ln -sf "/usr/share/zoneinfo/$TZ" /etc/localtime
        echo "$TZ" >/etc/timezone
    fi
    if [ "$PUID" != 0 ]; then
        getent group "$PGID" >/dev/null || groupadd --gid "$PGID" stemd
        getent passwd "$PUID" >/dev/null ||
            useradd --uid "$PUID" --gid "$PGID" --home-dir /config --no-create-home \
                --shell /usr/sbin/nologin stemd
    fi
    mkdir -p /config
    # /config only, not across mounts under it, links not followed: the media volumes
    # keep their owners. A read-only or squashed /config is said, not fatal: stemd
    # says what it cannot write.
    find /config -xdev \( ! -user "$PUID" -o ! -group "$PGID" \) -exec chown -h "$PUID:$PGID" {} + ||
        echo "stemd-entrypoint: cannot give all of /config to $PUID:$PGID (read-only?)" >&2
    STEMD_AS_USER=1 exec setpriv --reuid="$PUID" --regid="$PGID" --clear-groups --no-new-privs \
        "$0" "$@"
fi

umask "$UMASK"
[ -w /config ] || fail "/config is not writable by uid $PUID: set PUID/PGID to its owner"
if [ ! -e /config/stemd.yaml ]; then
    cp /usr/share/stemd/stemd.yaml /config/.stemd.yaml.new
    mv /config/.stemd.yaml.new /config/stemd.yaml
    echo "stemd-entrypoint: wrote the default /config/stemd.yaml (edit it, then restart)" >&2
fi
# the token http.token_file names, made when missing (stemd reads the config)
if made=$(stemd token new --if-missing 2>&1 >/dev/null) && [ -n "$made" ]; then
    echo "stemd-entrypoint: $made; print it with: docker exec <container> stemd token show" >&2
elif [ -n "$made" ]; then
    fail "$made"
fi
[ "$#" -gt 0 ] || set -- run
exec stemd "$@"
