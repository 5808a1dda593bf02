#!/usr/bin/env bash
# What idle workers cost Redis, and how soon one of them takes a new batch: starts a
# private Redis and a private Postgres (max_connections 2000), WORKERS (100) idle
# `renderq worker`s on one queue, counts the commands Redis serves over WINDOW (30)
# seconds, then submits a one-job batch ROUNDS (5) times and prints, for each, the
# time from the batch's submit to its job's claim (the record's created_at to
# started_at), then the CPU the workers used while idle.
#
#   scripts/idle-bench.sh [BINARY]      (BINARY: target/release/renderq)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release/renderq}")
WORKERS=${WORKERS:-100}
WINDOW=${WINDOW:-30}
ROUNDS=${ROUNDS:-5}
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    redis-cli -p "$rport" shutdown nosave >/dev/null 2>&1 || true
    su postgres -s /bin/sh -c "$PG_BIN/pg_ctl -D $work/pg -m immediate stop" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port)
pport=$(free_port)
redis-server --port "$rport" --save '' --appendonly no --daemonize yes --logfile "$work/redis.log"
chmod 777 "$work"
su postgres -s /bin/sh -c "$PG_BIN/initdb -D $work/pg -A trust -U postgres" >/dev/null
su postgres -s /bin/sh -c "$PG_BIN/pg_ctl -D $work/pg -l $work/pg.log -o '-p $pport -k $work -c max_connections=2000 -c fsync=off' start" >/dev/null
for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
export DATABASE_URL="postgres://postgres@127.0.0.1:$pport/postgres"
export REDIS_URL="redis://127.0.0.1:$rport"
export RENDERQ_STORE="$work/out" RENDERQ_LOG=warn
"$BIN" migrate >/dev/null
for i in $(seq "$WORKERS"); do
    "$BIN" worker --worker-id "idle-$i" >"$work/worker-$i.log" 2>&1 &
    pids+=($!)
done
cpu() { # the workers' CPU seconds so far
    local ticks=0
    for p in "${pids[@]}"; do
        set -- $(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null || echo "0 0")
        ticks=$((ticks + $1 + $2))
    done
    echo "$ticks"
}
sleep 10
stats() { redis-cli -p "$rport" info commandstats | tr -d '\r' | grep '^cmdstat_'; }
stats > "$work/before"; cpu0=$(cpu)
sleep "$WINDOW"
stats > "$work/after"; cpu1=$(cpu)
python3 - "$work/before" "$work/after" "$WORKERS" "$WINDOW" <<'PY'
import re, sys
def read(path):
    out = {}
    for line in open(path):
        m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out
a, b = read(sys.argv[1]), read(sys.argv[2])
workers, window = int(sys.argv[3]), float(sys.argv[4])
# The INFO that read the counts is not the workers'.
delta = {k: b.get(k, 0) - a.get(k, 0) - (1 if k == "info" else 0) for k in b}
total = sum(delta.values())
print(f"{workers} idle workers, {window:.0f} s: {total / window:.1f} Redis commands/s, "
      f"{total / window / workers:.2f} per worker")
for k, v in sorted(delta.items(), key=lambda kv: -kv[1]):
    if v:
        print(f"  {k:<12} {v / window / workers:.3f}/s per worker")
PY
hz=$(getconf CLK_TCK)
python3 -c "print(f'CPU while idle: {($cpu1-$cpu0)/$hz/$WINDOW/$WORKERS*100:.3f} % of a core per worker')"
for r in $(seq "$ROUNDS"); do
    sleep 2
    echo "{\"prompt\":\"idle round $r\",\"width\":64,\"height\":64}" > "$work/one.jsonl"
    "$BIN" submit "$work/one.jsonl" --name "idle-$r" >/dev/null
    for _ in $(seq 100); do
        ms=$(psql "$DATABASE_URL" -Atc "select round(extract(epoch from j.started_at - j.created_at) * 1000)
            from renderq.jobs j join renderq.batches b on b.id = j.batch_id
            where b.name = 'idle-$r' and j.started_at is not null")
        [ -n "$ms" ] && break
        sleep 0.1
    done
    echo "round $r: submit to claim ${ms:-?} ms"
done
