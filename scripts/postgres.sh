#!/usr/bin/env bash
# A private PostgreSQL server for the tests (Debian packages): installs them if missing, initdb's a data
# directory owned by the `postgres` user (initdb refuses to run as root), starts it on a private port unless
# it is already running, creates the database, and prints its SQLAlchemy URL on stdout (everything else goes
# to stderr). Idempotent.
#
#   scripts/postgres.sh [DATA_DIR] [PORT] [DATABASE]   defaults: /tmp/switchboard-pg 55432 switchboard_test
set -euo pipefail
DATA_DIR=${1:-${SWITCHBOARD_PG_DIR:-/tmp/switchboard-pg}}
PORT=${2:-${SWITCHBOARD_PG_PORT:-55432}}
DB=${3:-switchboard_test}
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  echo "$dir"
}

if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/initdb" ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq postgresql >&2
fi
BIN=$(pg_bin)

# Run a command as the postgres user (root: runuser; others: sudo -u).
as_pg() {
  if [ "$(id -un)" = "postgres" ]; then "$@"
  elif [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"
  else sudo -u postgres -- "$@"; fi
}

if [ ! -s "$DATA_DIR/PG_VERSION" ]; then
  $SUDO mkdir -p "$DATA_DIR"
  $SUDO chown postgres:postgres "$DATA_DIR"
  $SUDO chmod 700 "$DATA_DIR"
  as_pg "$BIN/initdb" -D "$DATA_DIR" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >&2
fi

if ! as_pg "$BIN/pg_ctl" -D "$DATA_DIR" status >/dev/null 2>&1; then
  as_pg "$BIN/pg_ctl" -D "$DATA_DIR" -l "$DATA_DIR/server.log" -w -t 60 \
    -o "-p $PORT -k $DATA_DIR -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200" start >&2
fi

PSQL=("$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -qtA)
if [ "$(as_pg "${PSQL[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]; then
  as_pg "${PSQL[@]}" -d postgres -c "CREATE DATABASE $DB" >&2
fi
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/$DB"
