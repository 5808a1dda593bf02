#!/usr/bin/env bash
# Checks `renderq serve`'s /v1/openapi.json from outside, as a client generator would
# read it: the document is valid OpenAPI 3.1 (openapi-spec-validator), and real
# answers of a running server (a batch rendered by a real `renderq worker`, its jobs,
# a job with its attempts, cancel and retry, and refusals) each match the schema the
# document gives for that operation and status, with no field the document does not
# name. Runs on the embedded default (SQLite, a directory store). The validators live
# in a venv under target/.
# Usage: scripts/openapi-check.sh [path/to/renderq]   (default target/debug/renderq)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/renderq}
[[ -x $bin ]] || { echo "openapi-check: no $bin (build it first)"; exit 2; }
venv=target/openapi-venv
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import openapi_spec_validator, jsonschema' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'openapi-spec-validator>=0.7,<0.9' 'jsonschema>=4.18,<5'
fi
source scripts/embedded-serve.sh
embedded_serve "$bin" openapi admin
if ! RENDERQ_BASE=http://127.0.0.1:$port RENDERQ_TOKEN=$token "$venv/bin/python" - <<'PY'
import copy, json, os, time, urllib.error, urllib.request, uuid
import jsonschema
from openapi_spec_validator import validate

base, token = os.environ["RENDERQ_BASE"], os.environ["RENDERQ_TOKEN"]

def call(method, path, body=None, content_type="application/json"):
    req = urllib.request.Request(base + path, data=body, method=method,
                                 headers={"Authorization": "Bearer " + token, "Content-Type": content_type})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")

with urllib.request.urlopen(base + "/v1/openapi.json") as r:
    doc = json.load(r)
validate(doc)

# Strict copies of the component schemas: an answer may hold no field the document
# does not name. A schema that another extends through allOf stays open; the one
# extending it closes over both.
components = copy.deepcopy(doc["components"])
extended = {part["$ref"].rsplit("/", 1)[1]
            for s in components["schemas"].values() for part in s.get("allOf", []) if "$ref" in part}
for name, s in components["schemas"].items():
    if "allOf" in s:
        s["unevaluatedProperties"] = False
    elif s.get("type") == "object" and "properties" in s and name not in extended:
        s["additionalProperties"] = False

checked = []
def check(method, template, path, status, body=None, content_type="application/json"):
    got, answer = call(method.upper(), path, body, content_type)
    assert got == status, (method, path, got, answer)
    op = doc["paths"][template][method]
    schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
    root = dict(schema, components=components)
    jsonschema.Draft202012Validator(root).validate(answer)
    checked.append(f"{method.upper()} {template} {status}")
    return answer

jobs = "\n".join(json.dumps({"prompt": f"red shoe {i}", "width": 64, "height": 64, "seed": i,
                             "metadata": {"sku": f"S-{i}"}}) for i in range(3))
made = check("post", "/v1/batches", "/v1/batches?name=openapi-check", 201, jobs.encode(), "application/jsonl")
batch = made["batch_id"]
for _ in range(300):
    b = check("get", "/v1/batches/{id}", f"/v1/batches/{batch}", 200)
    if b["done"]:
        break
    time.sleep(0.1)
assert b["done"] and b["counts"]["succeeded"] == 3, b
check("get", "/v1/batches", "/v1/batches?limit=5", 200)
page = check("get", "/v1/batches/{id}/jobs", f"/v1/batches/{batch}/jobs", 200)
job = check("get", "/v1/jobs/{id}", f"/v1/jobs/{page['jobs'][0]['id']}", 200)
assert job["attempts"] and job["attempts"][-1]["outcome"] == "succeeded", job
check("post", "/v1/batches/{id}/retry", f"/v1/batches/{batch}/retry", 200, b"")
# Cancel answers the same shape whatever is left to cancel.
other = check("post", "/v1/batches", "/v1/batches", 201,
              json.dumps({"jobs": [{"prompt": "a lamp"}], "name": "to cancel"}).encode())
check("post", "/v1/batches/{id}/cancel", f"/v1/batches/{other['batch_id']}/cancel", 200, b"")
check("post", "/v1/jobs/{id}/cancel", f"/v1/jobs/{page['jobs'][1]['id']}/cancel", 200, b"")
# Refusals, in the one error shape.
bad = check("post", "/v1/batches", "/v1/batches", 422, b'{"prompt":"ok"}\n{"prompt":"x","width":-3}',
            "application/jsonl")
assert bad["error"]["lines"]["first"][0]["line"] == 2, bad
check("get", "/v1/jobs/{id}", "/v1/jobs/not-a-uuid", 400)
check("get", "/v1/jobs/{id}", f"/v1/jobs/{uuid.uuid4()}", 404)
check("get", "/v1/batches", "/v1/batches?limit=0", 400)
print(f"openapi-check: ok ({len(doc['paths'])} paths; {len(checked)} answers matched their schemas)")
PY
then
  echo "--- serve log"; tail -20 "$dir/serve.log"; echo "--- worker log"; tail -20 "$dir/worker.log"
  exit 1
fi
