#!/usr/bin/env bash
# Makes sure the servers the tests talk to answer: Postgres, Redis and an
# S3-compatible server (s3s-fs), and that Chromium and chromedriver are installed
# for the dashboard's browser test. Starts each server that does not answer;
# installs what is missing (Debian packages for Postgres, Redis and Chromium;
# `cargo install` for s3s-fs, into ~/.local/renderq-tools so a fresh clone does not
# build it again).
# Prints the environment the tests read, as `export` lines, on stdout.
set -euo pipefail

PG_HOST=127.0.0.1 PG_PORT=${RENDERQ_TEST_PG_PORT:-5432}
REDIS_PORT=${RENDERQ_TEST_REDIS_PORT:-6379}
S3_PORT=${RENDERQ_TEST_S3_PORT:-9100}
S3_ACCESS=renderq-test S3_SECRET=renderq-test-secret
TOOLS=${RENDERQ_TOOLS:-$HOME/.local/renderq-tools}
S3_DIR=${RENDERQ_TEST_S3_DIR:-/tmp/renderq-s3s}

log() { echo "services: $*" >&2; }
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 100); do port_open "$1" && return 0; sleep 0.2; done
  log "$2 did not come up on port $1"; return 1
}
apt_install() {
  log "installing $* (Debian packages)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# --- Postgres ---------------------------------------------------------------
if ! port_open "$PG_PORT"; then
  command -v pg_ctlcluster >/dev/null || apt_install postgresql postgresql-client
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  log "starting Postgres $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
  wait_port "$PG_PORT" Postgres
  # A fresh install asks for a password over TCP: give postgres the one the tests use.
  as_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >&2 || true
fi

# --- Redis ------------------------------------------------------------------
if ! port_open "$REDIS_PORT"; then
  command -v redis-server >/dev/null || apt_install redis-server
  log "starting Redis"
  mkdir -p /tmp/renderq-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir /tmp/renderq-redis --logfile /tmp/renderq-redis/redis.log >&2
  wait_port "$REDIS_PORT" Redis
fi

# --- Chromium and chromedriver (the dashboard's browser test) -----------------
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  apt_install chromium chromium-driver
fi

# --- S3 (s3s-fs) --------------------------------------------------------------
if ! port_open "$S3_PORT"; then
  s3s=$(command -v s3s-fs || true)
  [[ -n $s3s ]] || s3s=$TOOLS/bin/s3s-fs
  if [[ ! -x $s3s ]]; then
    log "installing s3s-fs 0.14.1 into $TOOLS (about 2 minutes, once)"
    cargo install s3s-fs@0.14.1 --locked --features binary --root "$TOOLS" -j2 >&2
  fi
  mkdir -p "$S3_DIR"
  log "starting s3s-fs on port $S3_PORT"
  nohup "$s3s" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_ACCESS" \
    --secret-key "$S3_SECRET" "$S3_DIR" >/tmp/renderq-s3s.log 2>&1 &
  wait_port "$S3_PORT" s3s-fs
fi

s3s_bin=$(command -v s3s-fs || echo "$TOOLS/bin/s3s-fs")
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
cat <<ENV
export RENDERQ_TEST_DATABASE_URL=postgres://postgres:postgres@$PG_HOST:$PG_PORT/postgres
export RENDERQ_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export RENDERQ_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export RENDERQ_TEST_S3_ACCESS_KEY=$S3_ACCESS
export RENDERQ_TEST_S3_SECRET_KEY=$S3_SECRET
export RENDERQ_TEST_S3S_BIN=$s3s_bin
export RENDERQ_TEST_PG_BIN=$pg_bin
ENV
