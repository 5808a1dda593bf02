#!/usr/bin/env bash
# Runs on a machine with an NVIDIA GPU and no Rust: the diffusion tests on cuda:0,
# then the diffusion benchmark at SD-Turbo size (512x512, the tiny model's channels
# x10, 4 steps) in f16 and bf16, from the binaries scripts/gpu-build.sh put in gpu/.
# Carry gpu/ with the tree.
# Needs the driver, and CUDA 13's runtime, cuBLAS and cuRAND (a Python environment's
# nvidia wheels or a system install). Logs go to $OUT (default gpu/out). The timeouts
# add up to 9 minutes, within one call of the device tool.
#
#   scripts/gpu-check.sh             # on the GPU machine
#   scripts/gpu-check.sh --dry-run   # here: the same binaries on the CPU, 64x64
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu/out}
mkdir -p "$out"
device=cuda:0 size=512 width=10 dtypes="f16 bf16"
if [ "${1:-}" = --dry-run ]; then
  device=cpu size=64 width=1 dtypes=f32
  # The stub libcuda the build linked against stands in for the driver here.
  export LD_LIBRARY_PATH=${RENDERQ_CUDA_DIR:-$HOME/.cache/renderq/cuda-13.0}/nvidia/cu13/lib/stubs
fi
# The binaries, unpacked (xz, or Python's lzma where xz is missing).
bin=$(mktemp -d)
for b in diffusion-tests diffusion-bench; do
  if command -v xz >/dev/null; then xz -dc "gpu/$b.xz" >"$bin/$b"; else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "gpu/$b.xz" "$bin/$b"
  fi
  chmod +x "$bin/$b"
done
# Where the CUDA libraries are: the first directory holding each.
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
  found=$(find /opt /usr /root "$HOME" -name "$lib" 2>/dev/null | head -1)
  if [ -z "$found" ]; then echo "gpu-check: $lib not found" >&2; exit 1; fi
  LD_LIBRARY_PATH=$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
done
export LD_LIBRARY_PATH
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  ldd "$bin/diffusion-tests" | grep -E 'libcuda|cudart|cublas|curand'
} | tee "$out/machine.txt"
status=0
# the_binary_reports… runs target/…/renderq, which stays on the build machine.
RENDERQ_TEST_DEVICE=$device timeout 180 "$bin/diffusion-tests" \
  --skip the_binary_reports_missing_weights_and_bad_settings --test-threads 1 2>&1 |
  tee "$out/tests.txt" || status=1
for dtype in $dtypes; do
  timeout 180 "$bin/diffusion-bench" --device "$device" --size "$size" --width "$width" \
    --dtype "$dtype" 2>&1 | tee "$out/bench-$dtype.txt" || status=1
done
exit $status
