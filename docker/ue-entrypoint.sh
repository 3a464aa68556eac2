#!/bin/sh
# Entrypoint of the compose `ue` service (docker-compose.yml): run the command as the owner of /out, the
# host folder ./out, so what meg-ue writes there belongs to whoever made ./out (the invoking user, root or
# any uid); no chmod, no --user flag. The service starts as root for this and only this: the command never
# runs as root unless ./out is root's. Started as another user (MEG_COMPOSE_UE_USER), it runs unchanged.
set -eu
if [ "$(id -u)" = 0 ] && [ -d /out ]; then
    uid=$(stat -c %u /out)
    gid=$(stat -c %g /out)
    if [ "$uid" != 0 ]; then
        export HOME=/tmp
        exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
    fi
fi
exec "$@"
