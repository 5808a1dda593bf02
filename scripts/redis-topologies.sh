#!/usr/bin/env bash
# Runs the conformance suite's Redis tests (the `postgres_redis` ones) on a Redis
# Cluster of three masters and on a Sentinel-managed master with a replica, each
# started here from Debian's redis-server on ports of their own and stopped at the end.
#
#   scripts/redis-topologies.sh [cluster|sentinel]...   (default: both)
#
# Needs the environment of scripts/services.sh (Postgres, s3s-fs) and the test
# binaries built by `cargo test`; scripts/test.sh runs it after the suite. The servers
# take ports 17100-17112 (RENDERQ_TOPOLOGY_PORT moves the base).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh)"
command -v redis-cli >/dev/null || { echo "redis-topologies: redis-cli is missing" >&2; exit 1; }

base=${RENDERQ_TOPOLOGY_PORT:-17100}
work=$(mktemp -d /tmp/renderq-topologies.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

log() { echo "redis-topologies: $*" >&2; }

# redis-server in the foreground (as a child, so cleanup stops it) on port $1 with the
# rest as options.
serve() {
  local port=$1
  shift
  mkdir -p "$work/$port"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$work/$port" --save "" \
    --appendonly no --logfile "$work/$port/redis.log" "$@" &
  pids+=($!)
}

wait_for() { # until the server on port $1 answers PING
  for _ in $(seq 200); do
    [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.05
  done
  log "nothing answers on port $1"
  return 1
}

suite() { # the URL the tests use
  log "conformance on $1"
  RENDERQ_TEST_REDIS_URL=$1 cargo test -j2 --locked postgres_redis
}

cluster() {
  local ports=($base $((base + 1)) $((base + 2)))
  for p in "${ports[@]}"; do
    serve "$p" --cluster-enabled yes --cluster-config-file "$work/$p/nodes.conf" \
      --cluster-node-timeout 2000
  done
  for p in "${ports[@]}"; do wait_for "$p"; done
  redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 \
    --cluster-yes >"$work/cluster-create.log"
  for _ in $(seq 200); do
    redis-cli -p "$base" cluster info | grep -q 'cluster_state:ok' && break
    sleep 0.05
  done
  suite "redis+cluster://127.0.0.1:$base,127.0.0.1:$((base + 1))"
}

sentinel() {
  local master=$((base + 10)) replica=$((base + 11)) sentinel=$((base + 12))
  serve "$master"
  serve "$replica" --replicaof 127.0.0.1 "$master"
  wait_for "$master"
  wait_for "$replica"
  mkdir -p "$work/$sentinel"
  cat >"$work/$sentinel/sentinel.conf" <<EOF
port $sentinel
bind 127.0.0.1
dir $work/$sentinel
sentinel monitor mymaster 127.0.0.1 $master 1
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 5000
EOF
  redis-server "$work/$sentinel/sentinel.conf" --sentinel >"$work/$sentinel/log" 2>&1 &
  pids+=($!)
  wait_for "$sentinel"
  suite "redis+sentinel://127.0.0.1:$sentinel/mymaster"
}

topologies=("$@")
[ ${#topologies[@]} -gt 0 ] || topologies=(cluster sentinel)
for t in "${topologies[@]}"; do
  case $t in
    cluster) cluster ;;
    sentinel) sentinel ;;
    *) log "unknown topology $t (cluster, sentinel)"; exit 2 ;;
  esac
done
log ok
