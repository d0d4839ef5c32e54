#!/usr/bin/env bash
# A throwaway PostgreSQL server for the review-queue tests (and the benchmark).
#
#     eval "$(bash .ci/postgres.sh)"     # sets GRADGUARD_TEST_POSTGRES_URL
#     bash .ci/postgres.sh stop          # stops it (the folder stays; run again to restart)
#
# Idempotent: installs the Debian `postgresql` package only when initdb/pg_ctl are missing, creates the
# cluster in $GRADGUARD_PG_DIR (default: $TMPDIR/gradguard-pg) only once, starts it only when it is not
# running, and prints the same URL every time. The server listens on 127.0.0.1 only, on
# $GRADGUARD_PG_PORT (default 54329, or a free port when that one is taken by something else), with its
# socket in the cluster folder. Only the `export ...` line goes to stdout; everything else to stderr.
set -euo pipefail

dir="${GRADGUARD_PG_DIR:-${TMPDIR:-/tmp}/gradguard-pg}"
port="${GRADGUARD_PG_PORT:-54329}"
user=gradguard
database=gradguard_test

log() { echo "postgres.sh: $*" >&2; }

find_bindir() {
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]]; then echo "$d"; return; fi
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

bindir="$(find_bindir)"
if [[ -z "$bindir" ]]; then
    log "initdb/pg_ctl not found; installing the postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y postgresql >&2
    bindir="$(find_bindir)"
    [[ -n "$bindir" ]] || { log "postgresql installed but initdb/pg_ctl still not found"; exit 1; }
fi

# Run a command as the cluster's owner: `postgres` when we are root (initdb refuses root), else ourselves.
if [[ "$(id -u)" == 0 ]]; then
    owner=postgres
    id -u "$owner" >/dev/null 2>&1 || useradd --system --home-dir "$dir" --shell /bin/bash "$owner"
    as_owner() { su "$owner" -s /bin/bash -c "$(printf '%q ' "$@")"; }
else
    owner="$(id -un)"
    as_owner() { "$@"; }
fi

port_free() {
    python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

if [[ "${1:-}" == "stop" ]]; then
    if [[ -d "$dir/data" ]]; then as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast stop >&2 || true; fi
    exit 0
fi

if [[ ! -f "$dir/data/PG_VERSION" ]]; then
    log "creating a cluster in $dir (PostgreSQL $("$bindir/pg_ctl" --version | awk '{print $3}'))"
    install -d -o "$owner" -m 700 "$dir"
    head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/password.tmp"
    chown "$owner" "$dir/password.tmp"
    mv "$dir/password.tmp" "$dir/password"
    as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >&2
    rm -f "$dir/port"
fi
password="$(cat "$dir/password")"

if as_owner "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    port="$(cat "$dir/port")"
    log "server already running on 127.0.0.1:$port"
else
    if [[ -f "$dir/port" ]]; then port="$(cat "$dir/port")"; fi
    if ! port_free "$port"; then
        port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
        log "port taken; using $port"
    fi
    echo "$port" >"$dir/port"
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200" >&2
fi

psql_su() { as_owner "$bindir/psql" -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
if [[ "$(psql_su -c "SELECT 1 FROM pg_roles WHERE rolname = '$user'")" != 1 ]]; then
    psql_su -c "CREATE ROLE $user LOGIN PASSWORD '$password'" >&2
fi
if [[ "$(psql_su -c "SELECT 1 FROM pg_database WHERE datname = '$database'")" != 1 ]]; then
    psql_su -c "CREATE DATABASE $database OWNER $user" >&2
fi

echo "export GRADGUARD_TEST_POSTGRES_URL=postgresql://$user:$password@127.0.0.1:$port/$database"
