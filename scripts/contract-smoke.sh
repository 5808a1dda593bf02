#!/usr/bin/env bash
# A copy of ../shared/checks/contract-smoke, so CI runs it from a clean clone.
# Checks the fixed names of DESIGN.md from outside, the way other tools will use them:
# the renderq binary's commands, DATABASE_URL / REDIS_URL / RENDERQ_STORE, the Redis stream,
# renderq.jobs and renderq.batch_progress. It proves no promise; it catches a drifted name.
# Usage: contract-smoke [path/to/renderq]   (default: target/release/renderq, else target/debug/renderq)
# Needs: psql, redis-cli, Postgres on 127.0.0.1:5432 (user postgres, trust), Redis on 127.0.0.1:6379.
set -u
bin=${1:-}
[[ -n $bin ]] || for b in target/release/renderq target/debug/renderq; do [[ -x $b ]] && { bin=$b; break; }; done
[[ -x ${bin:-} ]] || { echo "contract-smoke: no renderq binary (build it, or pass its path)"; exit 2; }
pg=${SMOKE_PG:-postgres://postgres@127.0.0.1:5432}
db=smoke_$$; q=smoke$$; out=$(mktemp -d)
fail() { echo "contract-smoke: FAIL: $*"; exit 1; }
cleanup() { [[ -n ${w:-} ]] && kill "$w" 2>/dev/null; wait 2>/dev/null; psql "$pg/postgres" -qAt -c "drop database if exists $db" >/dev/null 2>&1; redis-cli del "renderq:{$q}:stream" >/dev/null 2>&1; rm -rf "$out"; }
trap cleanup EXIT
psql "$pg/postgres" -qAt -c "create database $db" >/dev/null || fail "cannot create a database at $pg"
export DATABASE_URL=$pg/$db REDIS_URL=redis://127.0.0.1:6379 RENDERQ_QUEUE=$q RENDERQ_STORE=$out/store
f=$out/jobs.jsonl
for i in 1 2 3 4 5; do echo "{\"prompt\":\"smoke $i\",\"width\":64,\"height\":64}"; done >"$f"
"$bin" migrate >/dev/null || fail "renderq migrate"
batch=$("$bin" submit "$f" | tail -n1) || fail "renderq submit"
[[ $batch =~ ^[0-9a-f-]{36}$ ]] || fail "submit's last line is not a batch id: '$batch'"
"$bin" worker >"$out/worker.log" 2>&1 & w=$!
timeout 60 "$bin" wait "$batch" >/dev/null || fail "renderq wait did not exit 0 within 60 s (worker log: $out/worker.log)"
n=$(psql "$DATABASE_URL" -qAt -c "select count(*) from renderq.jobs where batch_id='$batch' and state='succeeded' and output_key is not null") || fail "renderq.jobs"
[[ $n == 5 ]] || fail "renderq.jobs has $n succeeded jobs with an output_key, want 5"
p=$(psql "$DATABASE_URL" -qAt -c "select total, succeeded, done from renderq.batch_progress where batch_id='$batch'") || fail "renderq.batch_progress"
[[ $p == "5|5|t" ]] || fail "renderq.batch_progress says '$p', want 5|5|t"
files=$(find "$out/store" -type f | wc -l)
[[ $files == 5 ]] || fail "the directory store holds $files files, want 5"
jid=$(uuidgen 2>/dev/null || cat /proc/sys/kernel/random/uuid)
redis-cli xadd "renderq:{$q}:stream" '*' job "{\"id\":\"$jid\",\"prompt\":\"raw smoke\",\"width\":64,\"height\":64}" >/dev/null || fail "XADD"
for i in $(seq 100); do
  s=$(psql "$DATABASE_URL" -qAt -c "select state from renderq.jobs where id='$jid'")
  [[ $s == succeeded ]] && break; sleep 0.2
done
[[ $s == succeeded ]] || fail "a job XADDed to renderq:{$q}:stream did not succeed (state '$s')"
"$bin" status "$batch" >/dev/null || fail "renderq status"
echo "contract-smoke: ok (submit, worker, wait, status, migrate, the stream, renderq.jobs, renderq.batch_progress)"
