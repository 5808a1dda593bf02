#!/usr/bin/env bash
# The one command that runs every test: checks (and starts, or installs) Postgres,
# Redis and s3s-fs, then runs the whole suite on them. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh)"
# Each test makes its own database (rq_t_*); drop those an earlier run left behind.
psql "$RENDERQ_TEST_DATABASE_URL" -qAt -c "select datname from pg_database where datname like 'rq_t_%'" 2>/dev/null \
  | while read -r db; do psql "$RENDERQ_TEST_DATABASE_URL" -qc "drop database if exists \"$db\"" >/dev/null 2>&1 || true; done
# `cargo test` also builds target/debug/renderq (the integration tests run it); a
# separate `cargo build` would compile the dependencies twice (dev-dependencies change
# the feature set).
cargo test -j2 --locked "$@"
SMOKE_PG=${RENDERQ_TEST_DATABASE_URL%/postgres} bash scripts/contract-smoke.sh target/debug/renderq
scripts/openai-client-check.sh target/debug/renderq
scripts/openapi-check.sh target/debug/renderq
scripts/redis-topologies.sh
deploy/check.sh lint
