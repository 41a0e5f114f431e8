# Sourced: starts a throwaway PostgreSQL cluster in a temporary folder, on
# a free loopback port, as an unprivileged user (initdb refuses root), and
# stops and removes it when the sourcing shell exits. Installs Debian's
# postgresql when it is missing. Sets STYLEFARM_TEST_POSTGRES to a URL of
# its `postgres` database (tests create a database each from there).
#   . scripts/pg-throwaway.sh
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
[ -x "$(pg_bin)/pg_ctl" ] || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }
PG_BIN="$(pg_bin)"
PG_DIR="$(mktemp -d /tmp/stylefarm-pg.XXXXXX)"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$PG_DIR"
PG_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres --no-locale -E UTF8 >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c max_connections=400 -c shared_buffers=256MB" start >/dev/null
pg_throwaway_stop() { as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1 || true; rm -rf "$PG_DIR"; }
trap pg_throwaway_stop EXIT
export STYLEFARM_TEST_POSTGRES="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
