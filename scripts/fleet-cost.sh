#!/usr/bin/env bash
# What each job costs the shared servers: runs `renderq bench` on a fresh database and
# prints, per job, the Postgres transactions, rows written, WAL bytes and CPU, and the
# Redis commands (by command) and CPU, with the bench's own figures. These are the
# numbers docs/scaling.md extrapolates from.
#
#   scripts/fleet-cost.sh [BINARY] [-- bench flags]   (BINARY: target/release/renderq)
#
# RENDERQ_COST_SQL, when set, runs on the fresh database after its migrations: a way to
# ask what a schema change would save (drop an index, disable a trigger) before making it.
#
# Uses the Postgres and Redis that scripts/services.sh starts, and reads the CPU time
# of their processes from /proc, so nothing else should load them meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release/renderq}")
shift || true
[ "${1:-}" = "--" ] && shift
command -v bc >/dev/null || { echo "fleet-cost: needs bc (apt-get install bc)" >&2; exit 1; }
eval "$(scripts/services.sh)"
admin=$RENDERQ_TEST_DATABASE_URL
db=rq_cost_$$
out=$(mktemp -d "${RENDERQ_COST_DIR:-/dev/shm}/renderq-cost.XXXXXX")
trap 'psql "$admin" -qc "drop database if exists $db" >/dev/null 2>&1 || true; rm -rf "$out" "$out".*' EXIT
psql "$admin" -qc "create database $db"
export DATABASE_URL=${admin%/*}/$db
export REDIS_URL=${REDIS_URL:-$RENDERQ_TEST_REDIS_URL}
export RENDERQ_STORE=$out RENDERQ_LOG=warn
"$BIN" migrate >/dev/null
[ -n "${RENDERQ_COST_SQL:-}" ] && psql "$DATABASE_URL" -qc "$RENDERQ_COST_SQL"

tick=$(getconf CLK_TCK)
# CPU seconds of every process whose command line matches $1, with its reaped children
# (a backend that exits adds its time to the postmaster's).
cpu_of() {
  local total=0
  for pid in $(pgrep -f "$1"); do
    read -r -a f <"/proc/$pid/stat" 2>/dev/null || continue
    total=$((total + f[13] + f[14] + f[15] + f[16]))
  done
  echo "scale=3; $total / $tick" | bc
}
pg_stats() {
  psql "$DATABASE_URL" -AtF' ' -c "select xact_commit, tup_inserted, tup_updated, tup_deleted,
      (select wal_bytes from pg_stat_wal),
      (select coalesce(sum(n_tup_hot_upd), 0) from pg_stat_user_tables)
    from pg_stat_database where datname = current_database()"
}
redis_calls() {
  redis-cli -u "$REDIS_URL" info commandstats | tr -d '\r' |
    sed -n 's/^cmdstat_\([a-z|]*\):calls=\([0-9]*\).*/\1 \2/p' | sort
}
redis_cpu() {
  redis-cli -u "$REDIS_URL" info cpu | tr -d '\r' |
    awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.3f", s}'
}

read -r x0 i0 u0 d0 w0 h0 < <(pg_stats)
pg0=$(cpu_of 'postgres')
r0=$(redis_cpu)
redis_calls >"$out.calls0"
start=$(date +%s.%N)
/usr/bin/time -f '%U %S' -o "$out.time" "$BIN" bench "$@" | tee "$out.bench"
end=$(date +%s.%N)
pg1=$(cpu_of 'postgres')
r1=$(redis_cpu)
redis_calls >"$out.calls1"
# The stats collector reports with a delay of up to a second.
sleep 1.5
read -r x1 i1 u1 d1 w1 h1 < <(pg_stats)
jobs=$(sed -n 's/^drain: \([0-9]*\) jobs.*/\1/p' "$out.bench")
read -r bu bs <"$out.time"
per() { echo "scale=3; ($1) / $jobs" | bc; }
echo "--- per job ($jobs jobs, wall $(echo "$end - $start" | bc) s, submit and drain together)"
echo "postgres: $(per "$x1 - $x0") transactions, $(per "$i1 - $i0") rows inserted, $(per "$u1 - $u0") updated ($(per "$h1 - $h0") of them HOT), $(per "$d1 - $d0") deleted, $(per "$w1 - $w0") WAL bytes"
echo "postgres CPU: $(echo "scale=3; ($pg1 - $pg0) * 1000000 / $jobs" | bc) µs per job"
echo "redis CPU: $(echo "scale=3; ($r1 - $r0) * 1000000 / $jobs" | bc) µs per job"
echo "renderq CPU: $(echo "scale=3; ($bu + $bs) * 1000000 / $jobs" | bc) µs per job"
echo "redis commands per job:"
join -a2 -e0 -o 2.1,1.2,2.2 "$out.calls0" "$out.calls1" |
  awk -v n="$jobs" '{d = $3 - $2; if (d > 0) printf "  %-14s %.3f\n", $1, d / n; t += d} END {printf "  %-14s %.3f\n", "total", t / n}'
