#!/bin/sh
# Starts Redis with the password from the file named by FITSTREAM_REDIS_PASSWORD_FILE (a compose
# secret). Only the password's SHA-256 reaches the generated config (an ACL rule for the `default`
# user), and the password reaches no command line, where `ps` and `docker inspect` would show it.
# Then it hands over to the image's own entrypoint, which drops root and runs redis-server.
set -eu

password_file="${FITSTREAM_REDIS_PASSWORD_FILE:-}"
conf="${FITSTREAM_REDIS_CONF:-/usr/local/etc/redis/fitstream.conf}"

if [ -z "$password_file" ] || [ ! -s "$password_file" ] || [ ! -r "$password_file" ]; then
  echo "redis: no password: FITSTREAM_REDIS_PASSWORD_FILE ('$password_file') is unset, missing, unreadable or empty;" \
    "create secrets/redis_password (see secrets/README.md)" >&2
  exit 1
fi
# One line, its line ending dropped: the same password Fitstream reads from the same file.
password_hash="$(tr -d '\r\n' < "$password_file" | sha256sum | cut -d ' ' -f 1)"

umask 077
mkdir -p "$(dirname "$conf")"
cat > "$conf" <<CONF
# Written by redis-entrypoint.sh at each start; edit docker/redis-entrypoint.sh instead.
# Append-only file: events not yet acknowledged by every consumer group survive a restart.
appendonly yes
appendfsync everysec
maxmemory-policy noeviction
user default on #$password_hash ~* &* +@all
CONF
if [ "$(id -u)" = 0 ] && id redis > /dev/null 2>&1; then
  chown redis:redis "$conf"
fi

exec docker-entrypoint.sh redis-server "$conf"
