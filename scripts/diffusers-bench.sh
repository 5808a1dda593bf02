#!/usr/bin/env bash
# renderq against diffusers on the same weights, stage by stage: a full-size SD-Turbo
# with random weights written by diffusers' save_pretrained into a temporary directory
# (f32, about 5 GB; never kept), then one 1-step SIZE×SIZE (256) image without guidance
# on THREADS (2) CPU threads, by diffusers (from PyPI, in VENV) and by `renderq run
# --diffusion sd-turbo`. Prints the load time and each stage's time side by side.
#
#   scripts/diffusers-bench.sh [BINARY]     (BINARY: target/release/renderq)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release/renderq}")
SIZE=${SIZE:-256}
THREADS=${THREADS:-2}
VENV=${VENV:-/tmp/renderq-diffusers-venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch diffusers transformers safetensors
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$VENV/bin/python" scripts/diffusers-bench.py write "$work/models/sd-turbo" 2>/dev/null
# Both sides load from the page cache: what is timed is loading, not the disk.
warm() { find "$work/models" -type f -exec cat {} + >/dev/null; }
# renderq runs first. On a virtual machine that hands freed memory back to its host,
# the process after a large one pays for fresh pages: renderq's copied weights need
# 5 GB of them (measured: 1–3 s more loading right after diffusers), while diffusers
# maps the files and was measured the same after either side.
echo "{\"prompt\":\"a teal armchair\",\"model\":\"sd-turbo\",\"width\":$SIZE,\"height\":$SIZE,\"steps\":1,\"guidance\":0,\"seed\":1}" > "$work/job.jsonl"
warm
started=$(date +%s.%N)
RAYON_NUM_THREADS=$THREADS RENDERQ_LOG=renderq=debug RENDERQ_LOG_FORMAT=json \
    DATABASE_URL="sqlite://$work/rq.db" RENDERQ_STORE="$work/out" \
    "$BIN" run "$work/job.jsonl" --diffusion sd-turbo --models-dir "$work/models" \
    --max-attempts 1 >/dev/null 2>"$work/log"
ended=$(date +%s.%N)
warm
diffusers=$(OMP_NUM_THREADS=$THREADS "$VENV/bin/python" scripts/diffusers-bench.py run \
    "$work/models/sd-turbo" "$SIZE" "$THREADS" 2>/dev/null | tail -1)
python3 - "$diffusers" "$work/log" "$started" "$ended" "$SIZE" "$THREADS" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
r = {}
for line in open(sys.argv[2]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("message") == "model loaded":
        r["load"] = e["secs"]
    if e.get("message") == "device call":
        r["text"], r["unet"], r["decode"] = e["text_secs"], e["unet_secs"], e["decode_secs"]
r["total"] = float(sys.argv[4]) - float(sys.argv[3])
print(f"SD-Turbo, random f32 weights, {sys.argv[5]}x{sys.argv[5]}, 1 step, {sys.argv[6]} CPU threads")
print(f"{'stage':<10}{'diffusers':>12}{'renderq':>12}")
for k in ("load", "text", "unet", "decode", "total"):
    dv, rv = d.get(k), r.get(k)
    fmt = lambda v: f"{v:10.2f} s" if v is not None else "         -"
    print(f"{k:<10}{fmt(dv)}{fmt(rv)}")
print("(renderq's total is the whole `renderq run`: start, load, render, encode, store)")
PY
