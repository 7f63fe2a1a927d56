#!/bin/sh
# stemd's container entrypoint, run by tini as PID 1's child.
#
# As root (the default): the user from PUID/PGID (default 1000:1000), the time zone
# from TZ, ownership of /config fixed (never of the media volumes), then this script
# again as that user. As that user: UMASK (default 022) applied, /config/stemd.yaml
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
case "$UMASK" in '' | *[!0-7]* | ????*) fail "UMASK must be octal, e.g. 022 or 002, not '$UMASK'" ;; esac

if [ "$(id -u)" = 0 ] && [ "${STEMD_AS_USER:-}" != 1 ]; then
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
    chown -R "$PUID:$PGID" /config # /config only: the media volumes keep their owners
    if [ "$PUID" = 0 ]; then
        STEMD_AS_USER=1 exec "$0" "$@"
    fi
    STEMD_AS_USER=1 exec setpriv --reuid="$PUID" --regid="$PGID" --clear-groups "$0" "$@"
fi

umask "$UMASK"
if [ ! -e /config/stemd.yaml ]; then
    cp /usr/share/stemd/stemd.yaml /config/stemd.yaml
    echo "stemd-entrypoint: wrote the default /config/stemd.yaml (edit it, then restart)" >&2
fi
token_file=$(sed -n 's/^  token_file: *\([^ #]*\).*/\1/p' /config/stemd.yaml)
if [ -n "$token_file" ] && [ "$token_file" != null ] && [ ! -e "$token_file" ]; then
    stemd token new "$token_file" >/dev/null 2>&1 || fail "cannot write the token $token_file"
    echo "stemd-entrypoint: made an access token in $token_file;" \
        "print it with: docker exec <container> stemd token show" >&2
fi
[ "$#" -gt 0 ] || set -- run
exec stemd "$@"
