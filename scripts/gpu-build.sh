#!/usr/bin/env bash
# Builds the CUDA diffusion tests and benchmark on a machine with no GPU and no CUDA
# toolkit, for scripts/gpu-check.sh to run on one that has a GPU but no Rust.
#
#   scripts/gpu-build.sh            # then carry gpu/ to the GPU machine
#
# CUDA 13.0's compiler and libraries come from PyPI (NVIDIA's wheels) into
# $RENDERQ_CUDA_DIR (default ~/.cache/renderq/cuda-13.0). candle links libcuda, which
# only a driver installs, so a stub with the driver's symbols stands in for it at link
# time; the GPU machine's driver provides the real one. Kernels are compiled for
# CUDA_COMPUTE_CAP (default 90: H100/H200). Binaries go to gpu/ (git-ignored), xz-compressed.
set -euo pipefail
cd "$(dirname "$0")/.."
cuda=${RENDERQ_CUDA_DIR:-$HOME/.cache/renderq/cuda-13.0}
root=$cuda/nvidia/cu13
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.5.25
)
# Installed once per wheel list: $cuda/installed holds the list it was made from.
if [ "$(cat "$cuda/installed" 2>/dev/null)" != "${wheels[*]}" ]; then
  echo "installing CUDA 13.0 from PyPI into $cuda" >&2
  mkdir -p "$cuda/wheels"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_12_x86_64 \
    -d "$cuda/wheels" "${wheels[@]}"
  for w in "$cuda"/wheels/*.whl; do unzip -qo "$w" 'nvidia/*' -d "$cuda"; done
  chmod +x "$root"/bin/* "$root"/nvvm/bin/*
  # The linker looks for unversioned names.
  for lib in cublas cublasLt cudart curand nvrtc; do
    ln -sf "$(cd "$root/lib" && ls "lib$lib.so."* | grep -v alt | head -1)" "$root/lib/lib$lib.so"
  done
  # The libcuda stub: every driver function cudarc declares, as an empty symbol.
  cargo fetch -q --locked
  sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$(grep -A1 '^name = "cudarc"' Cargo.lock |
    sed -n 's/^version = "\(.*\)"/\1/p')"/src/driver/sys/mod.rs | head -1)
  mkdir -p "$root/lib/stubs"
  grep -oP '^pub unsafe fn \Kcu\w+' "$sys" | sort -u | sed 's/.*/void &(void) {}/' >"$root/lib/stubs/cuda.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$root/lib/stubs/cuda.c"
  echo "${wheels[*]}" >"$cuda/installed"
fi
# The name a program loads it by, for `gpu-check.sh --dry-run`.
ln -sf libcuda.so "$root/lib/stubs/libcuda.so.1"
export PATH=$root/bin:$PATH CUDA_ROOT=$root CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# Its own target directory: the cuda feature rebuilds candle and all that uses it.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
# The path of the `diffusion` executable cargo built, from its JSON messages (its
# progress and errors still go to stderr).
built() {
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "diffusion":
        print(m["executable"])'
}
tests=$(cargo test -j "${CARGO_BUILD_JOBS:-2}" --locked --release --features cuda --test diffusion --no-run \
  --message-format=json-render-diagnostics | built)
bench=$(cargo bench -j "${CARGO_BUILD_JOBS:-2}" --locked --features cuda --bench diffusion --no-run \
  --message-format=json-render-diagnostics | built)
# Stripped and compressed (the kernels' PTX is most of their size): about 18 MB for
# both, within what a copy of the tree to another machine may carry.
mkdir -p gpu
rm -f gpu/diffusion-tests.xz gpu/diffusion-bench.xz
strip -o gpu/diffusion-tests "$tests"
strip -o gpu/diffusion-bench "$bench"
xz -T2 -9 gpu/diffusion-tests gpu/diffusion-bench
ls -la gpu
