#!/usr/bin/env bash
# Renders through `renderq serve`'s /v1/images/generations with the official `openai`
# Python client, as a user's program would: b64_json and url answers, SGLang's extras
# (seed, num_inference_steps, …) through extra_body, a refused size and a wrong key
# as the client's own exceptions. Runs on the embedded default (SQLite, a directory
# store) with a real `renderq worker`. The client lives in a venv under target/.
# Usage: scripts/openai-client-check.sh [path/to/renderq]   (default target/debug/renderq)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/renderq}
[[ -x $bin ]] || { echo "openai-client-check: no $bin (build it first)"; exit 2; }
venv=target/openai-venv
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'openai>=1.40,<3'
fi
source scripts/embedded-serve.sh
embedded_serve "$bin" openai submit
if ! RENDERQ_BASE=http://127.0.0.1:$port/v1 RENDERQ_TOKEN=$token "$venv/bin/python" - <<'PY'
import base64, os, struct, urllib.request
import openai

client = openai.OpenAI(base_url=os.environ["RENDERQ_BASE"], api_key=os.environ["RENDERQ_TOKEN"], timeout=60)

def png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    return struct.unpack(">II", data[16:24])

r = client.images.generate(prompt="a brass lamp", n=2, size="96x64", response_format="b64_json",
                           extra_body={"seed": 11, "num_inference_steps": 2, "negative_prompt": "blur"})
images = [base64.b64decode(d.b64_json) for d in r.data]
assert len(images) == 2 and all(png_size(i) == (96, 64) for i in images), [png_size(i) for i in images]
assert images[0] != images[1], "seeds 11 and 12 gave the same image"

r = client.images.generate(prompt="a chair", size="64x64", response_format="url")
req = urllib.request.Request(r.data[0].url, headers={"Authorization": "Bearer " + os.environ["RENDERQ_TOKEN"]})
assert png_size(urllib.request.urlopen(req).read()) == (64, 64)

try:
    client.images.generate(prompt="a chair", size="99999x64")
    raise SystemExit("a size over the limit was accepted")
except openai.UnprocessableEntityError as e:
    assert "width" in str(e), e

try:
    openai.OpenAI(base_url=os.environ["RENDERQ_BASE"], api_key="sk-wrong").images.generate(prompt="x")
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError:
    pass
print("openai-client-check: ok (openai", openai.__version__ + ")")
PY
then
  echo "--- serve log"; tail -20 "$dir/serve.log"; echo "--- worker log"; tail -20 "$dir/worker.log"
  exit 1
fi
