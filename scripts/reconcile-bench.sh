#!/usr/bin/env bash
# The reconciler at a million queued jobs: queues N jobs (default 1,000,000) on a
# queue of their own, starts one worker that leads the reconciler (it holds one job
# for ten minutes and renders nothing else), and reports the worker's peak memory,
# each reconcile round's duration and pages, and the Redis commands the rounds sent.
# Then it deletes the queue's Redis keys (what FLUSHALL does to it) and reports the
# rounds that repair it. Too slow for the test suite (about 5 minutes); figures go in
# the README.
#
#   scripts/reconcile-bench.sh [BINARY] [JOBS] [SECONDS_PER_PHASE]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/renderq}
JOBS=${2:-1000000}
PHASE=${3:-60}
eval "$(scripts/services.sh)"
ADMIN=${RENDERQ_TEST_DATABASE_URL}
DB=rq_reconcile_bench
QUEUE=reconcile-bench-$$
WORK=$(mktemp -d)
trap 'kill $WORKER 2>/dev/null || true; redis-cli --scan --pattern "renderq:{$QUEUE}:*" | xargs -r redis-cli del >/dev/null; rm -rf "$WORK"' EXIT

psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
export DATABASE_URL=${ADMIN%/*}/$DB REDIS_URL=$RENDERQ_TEST_REDIS_URL RENDERQ_QUEUE=$QUEUE
export RENDERQ_STORE=$WORK/out
python3 -c "
import sys
with open('$WORK/jobs.jsonl', 'w') as f:
    for i in range($JOBS):
        f.write('{\"prompt\":\"job %d\",\"model\":\"noop\",\"width\":8,\"height\":8}\n' % i)
"
start=$(date +%s.%N)
"$BIN" submit "$WORK/jobs.jsonl" >/dev/null
echo "submitted $JOBS jobs in $(echo "$(date +%s.%N) - $start" | bc) s"

commands() { redis-cli info commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ {n += $3} END {print n}'; }
before=$(commands)
RENDERQ_LOG=renderq::worker::reconcile=debug RENDERQ_NOOP_DELAY_MS=600000 \
  "$BIN" worker --concurrency 1 --reconcile-secs 1 >"$WORK/worker.log" 2>&1 &
WORKER=$!
peak() { awk '/VmHWM/ {print $2 / 1024 " MB"}' "/proc/$WORKER/status"; }
sleep "$PHASE"
after=$(commands)
echo "steady: peak RSS $(peak), Redis commands $((after - before)) in ${PHASE} s (all clients)"
grep -o 'secs=[0-9.]* dispatch_pages=[0-9]* dispatch_entries=[0-9]* record_pages=[0-9]* suspects=[0-9]*' \
  "$WORK/worker.log" | sed 's/^/  round: /' || true

redis-cli --scan --pattern "renderq:{$QUEUE}:*" | xargs -r redis-cli del >/dev/null
echo "deleted the queue's Redis keys"
rounds_before=$(grep -c 'reconciler round done' "$WORK/worker.log" || true)
sleep "$PHASE"
echo "after the loss: peak RSS $(peak)"
grep 'reconciler round done\|repaired' "$WORK/worker.log" | tail -n +"$((rounds_before + 1))" \
  | grep -o 'redispatched=[0-9]*\|secs=[0-9.]* dispatch_pages=[0-9]* dispatch_entries=[0-9]* record_pages=[0-9]* suspects=[0-9]*' \
  | sed 's/^/  /' || true
echo "stream entries now: $(redis-cli xlen "renderq:{$QUEUE}:stream")"
kill -TERM "$WORKER"; wait "$WORKER" || true
psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB"
