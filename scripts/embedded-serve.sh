# Sourced by the checks that drive `renderq serve` from outside: starts, on the
# embedded default (SQLite and a directory store in a temporary directory), a server
# on a free port and a worker, with a token of the given scope; stops both on exit.
#   embedded_serve BIN QUEUE SCOPE   sets $dir, $port and $token
# The caller prints "$dir/serve.log" and "$dir/worker.log" when a check fails.
embedded_serve() {
  local bin=$1 queue=$2 scope=$3
  dir=$(mktemp -d)
  pids=()
  trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
  export DATABASE_URL=sqlite://$dir/rq.db RENDERQ_STORE=$dir/out RENDERQ_QUEUE=$queue
  unset REDIS_URL
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$bin" migrate >/dev/null
  token=$("$bin" token create --scope "$scope" --name "$queue-check" 2>/dev/null)
  "$bin" serve --listen "127.0.0.1:$port" >"$dir/serve.log" 2>&1 & pids+=($!)
  "$bin" worker >"$dir/worker.log" 2>&1 & pids+=($!)
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
}
