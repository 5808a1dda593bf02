#!/usr/bin/env bash
# How much of an images endpoint one worker keeps busy: a stub endpoint that answers
# every request after DELAY_MS (200) with a 64x64 PNG and has no limit of its own, and
# `renderq run` of JOBS remote jobs on the embedded default, for each
# "concurrency max-batch" pair given (default: 16 8, 16 16, 64 64). Prints images/s
# against the ideal, concurrency / delay. CONCURRENCY (1024) is the worker's --concurrency.
#
#   scripts/remote-bench.sh [BINARY] [JOBS]      (BINARY: target/release/renderq)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/renderq}
JOBS=${2:-800}
DELAY_MS=${DELAY_MS:-200}
PAIRS=${PAIRS:-"16:8 16:16 64:64"}
work=$(mktemp -d)
trap 'kill $stub 2>/dev/null || true; rm -rf "$work"' EXIT

python3 - "$DELAY_MS" > "$work/port" <<'PY' &
import asyncio, base64, json, struct, sys, zlib
delay = int(sys.argv[1]) / 1000
def png(w, h):
    raw = b"".join(b"\x00" + bytes([90, 120, 150]) * w for _ in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
body = json.dumps({"data": [{"b64_json": base64.b64encode(png(64, 64)).decode()}]}).encode()
reply = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
         + str(len(body)).encode() + b"\r\n\r\n" + body)
async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            await asyncio.sleep(delay)
            writer.write(reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
PY
stub=$!
for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")
for i in $(seq "$JOBS"); do
    printf '{"prompt":"product %d","model":"remote/stub","width":64,"height":64}\n' "$i"
done > "$work/jobs.jsonl"
for pair in $PAIRS; do
    conc=${pair%:*}; batch=${pair#*:}
    rm -rf "$work/db" && mkdir "$work/db"
    DATABASE_URL="sqlite://$work/db/renderq.db" RENDERQ_STORE="$work/db/out" RENDERQ_LOG=warn \
        "$BIN" run "$work/jobs.jsonl" --remote-url "http://127.0.0.1:$port/v1" \
        --remote-concurrency "$conc" --max-batch "$batch" --concurrency "${CONCURRENCY:-1024}" >/dev/null 2>&1
    # The drain as the record saw it: first claim to last finish (start-up, submit and
    # the contact sheet are not the endpoint's).
    python3 - "$work/db/renderq.db" "$conc" "$batch" "$DELAY_MS" <<'PY'
import sqlite3, sys
db, conc, batch, delay = sys.argv[1], *map(int, sys.argv[2:5])
n, first, last = sqlite3.connect(db).execute(
    "SELECT count(*), min(started_at), max(finished_at) FROM jobs WHERE state = 'succeeded'").fetchone()
secs = (last - first) / 1000
rate, ideal = n / secs, conc / (delay / 1000)
print(f"remote-concurrency {conc:3d}  max-batch {batch:3d}: {rate:6.1f} images/s of {ideal:.0f} ideal ({100 * rate / ideal:.0f} %), {n} jobs drained in {secs:.1f} s")
PY
done
