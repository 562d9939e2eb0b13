#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for bkg_db's tests and CI, on 127.0.0.1 only.
#
#   scripts/postgres.sh start [DIR]   create the cluster in DIR (default /tmp/bkg-pg) if needed and
#                                     start it; prints its port. Already running: ok.
#   scripts/postgres.sh stop [DIR]    stop it (fast shutdown). Not running: ok.
#   scripts/postgres.sh url [DIR]     print the superuser URL, postgres://postgres:…@127.0.0.1:PORT/postgres
#
# The server takes TLS too, with a certificate for 127.0.0.1 and localhost signed by DIR/ca.crt: a
# URL with `sslmode=verify-full&sslrootcert=DIR/ca.crt` in place of `sslmode=disable` uses it.
#
# The cluster belongs to the `postgres` OS user when run as root (initdb refuses root), to the
# caller otherwise. DIR holds the data (DIR/data), the unix socket, the server log (DIR/log), the
# port (kept across restarts, so a URL stays valid) and the superuser's password. Durability is
# off (fsync, full_page_writes): the data is disposable.
#
# With BKG_PG_OWNER_PID=PID, `start` records PID as a user of the cluster and leaves a watcher
# that stops the cluster and deletes DIR once every recorded user has exited: test processes
# share one cluster, and a run that fails or is killed leaves nothing behind. `start` holds a lock
# (DIR.lock) so that concurrent starts of one DIR create and start it once.
set -euo pipefail

usage() {
  echo "usage: $0 start|stop|url [DIR]" >&2
  exit 2
}

command=${1:-}
dir=${2:-/tmp/bkg-pg}
[[ $command =~ ^(start|stop|url|__reap)$ ]] || usage
[[ $dir = /* ]] || dir="$PWD/$dir"
dir=${dir%/}
data="$dir/data"

die() {
  echo "postgres.sh: $*" >&2
  exit 1
}

# Debian keeps the server binaries outside PATH, one directory per major version.
bin=""
if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
  bin=$(dirname "$(command -v pg_ctl)")
else
  for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
    [[ -x $candidate/pg_ctl && -x $candidate/initdb ]] && bin=$candidate
  done
fi

as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

running() {
  [[ -f $data/PG_VERSION ]] && as_owner "$bin/pg_ctl" status -D "$data" >/dev/null 2>&1
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {
  local port
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 40000))
    port_in_use "$port" || { echo "$port"; return; }
  done
  die "no free port found"
}

init_cluster() {
  mkdir -p "$dir"
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "no 'postgres' user: install PostgreSQL (scripts/setup.sh)"
    chown postgres: "$dir"
  fi
  chmod 700 "$dir"
  as_owner test -w "$dir" || die "$dir: the postgres user cannot write here (is a parent directory private?)"
  # URL-safe: base64 with - and _ and no padding.
  head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$dir/password"
  [[ $(id -u) -eq 0 ]] && chown postgres: "$dir/password"
  chmod 600 "$dir/password"
  as_owner "$bin/initdb" -D "$data" -U postgres --pwfile="$dir/password" -E UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256 --no-sync >/dev/null
  make_certificates
  cat >>"$data/postgresql.conf" <<EOF

# scripts/postgres.sh: a disposable cluster on loopback.
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
ssl = on
ssl_cert_file = '$dir/server.crt'
ssl_key_file = '$dir/server.key'
EOF
}

# TLS as a real server has it: a CA of the cluster's own (DIR/ca.crt, for a client's
# `sslrootcert=`) signs the server's certificate for 127.0.0.1 and localhost.
make_certificates() {
  local days=30
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/ca.key" \
    -out "$dir/ca.crt" -days "$days" -subj /CN=bkg-test-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/server.key" \
    -out "$dir/server.csr" -subj /CN=localhost 2>/dev/null
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -out "$dir/server.crt" -days "$days" -extfile <(printf '%s\n' 'subjectAltName=IP:127.0.0.1,DNS:localhost' \
    'basicConstraints=CA:FALSE' 'extendedKeyUsage=serverAuth') 2>/dev/null
  rm -f -- "$dir/server.csr" "$dir/ca.key" "$dir/ca.srl"
  chmod 600 "$dir/server.key"
  chmod 644 "$dir/ca.crt" "$dir/server.crt"
  if [[ $(id -u) -eq 0 ]]; then
    chown postgres: "$dir/server.key" "$dir/server.crt" "$dir/ca.crt"
  fi
}

# Whether a recorded user of the cluster is still running.
owners_alive() {
  local owner
  [[ -f $dir/owners ]] || return 1
  while read -r owner; do
    kill -0 "$owner" 2>/dev/null && return 0
  done <"$dir/owners"
  return 1
}

# Takes DIR.lock on fd 9. The watcher deletes the lock file along with DIR: a lock taken on a file
# deleted meanwhile is worthless, so take it again on the new one.
lock() {
  while true; do
    exec 9>"$dir.lock"
    flock 9
    [[ /proc/$$/fd/9 -ef $dir.lock ]] && return
    exec 9>&-
  done
}

start() {
  [[ -n $bin ]] || die "PostgreSQL's pg_ctl and initdb are missing: run scripts/setup.sh"
  lock
  [[ -f $data/PG_VERSION ]] || init_cluster
  if ! running; then
    local port attempts=1
    # A cluster stopped while in use keeps its port (its users hold URLs); a leftover gets a new one.
    if [[ -s $dir/port ]] && { [[ -z ${BKG_PG_OWNER_PID:-} ]] || owners_alive; }; then
      port=$(<"$dir/port")
    else
      port=$(free_port)
      attempts=5
    fi
    # Another process may take a free port between the check and the bind: pick again.
    # 9>&-: the server outlives this script and must not hold the start lock.
    until as_owner "$bin/pg_ctl" start -D "$data" -l "$dir/log" -w -t 60 -o "-p $port" >/dev/null 9>&-; do
      attempts=$((attempts - 1))
      ((attempts > 0)) || { tail -n 20 "$dir/log" >&2 || true; die "the server did not start (log: $dir/log)"; }
      port=$(free_port)
    done
    echo "$port" >"$dir/port"
  fi
  if [[ -n ${BKG_PG_OWNER_PID:-} ]]; then
    echo "$BKG_PG_OWNER_PID" >>"$dir/owners"
    watch_owners
  fi
  cat "$dir/port"
}

watch_owners() {
  if [[ -s $dir/watcher.pid ]] && kill -0 "$(<"$dir/watcher.pid")" 2>/dev/null; then
    return
  fi
  # setsid: a Ctrl-C to the test run must not kill the watcher before it has cleaned up. The
  # check and the removal happen under the start lock, so no start can slip in between.
  setsid bash -c '
    while sleep 1; do
      flock "$2.lock" bash "$1" __reap "$2" && break
    done
  ' watcher "$(readlink -f "$0")" "$dir" </dev/null >/dev/null 2>&1 9>&- &
  echo $! >"$dir/watcher.pid"
}

# The watcher's step: succeeds (and cleans up) once no user of the cluster is left.
__reap() {
  [[ -d $dir ]] || return 0
  owners_alive && return 1
  stop || true
  [[ -f $dir/password ]] && rm -rf -- "$dir"
  rm -f -- "$dir.lock"
  return 0
}

stop() {
  [[ -n $bin ]] || return 0
  if running; then
    as_owner "$bin/pg_ctl" stop -D "$data" -m fast -w -t 60 >/dev/null
  fi
}

url() {
  [[ -s $dir/port && -s $dir/password ]] || die "no cluster in $dir: run '$0 start $dir' first"
  echo "postgres://postgres:$(<"$dir/password")@127.0.0.1:$(<"$dir/port")/postgres?sslmode=disable"
}

"$command"
