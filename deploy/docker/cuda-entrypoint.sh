#!/bin/sh
# Refuses to start on a GPU whose compute capability is not the one this image's
# kernels were built for (RENDERQ_COMPUTE_CAP), instead of failing at the first job.
# RENDERQ_SKIP_CAP_CHECK=1 skips the check.
set -eu
if [ "${RENDERQ_SKIP_CAP_CHECK:-0}" != 1 ] && command -v nvidia-smi >/dev/null 2>&1; then
    caps=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | tr -d '.' | sort -u)
    for cap in $caps; do
        if [ "$cap" != "$RENDERQ_COMPUTE_CAP" ]; then
            echo "renderq: this image was built for compute capability $RENDERQ_COMPUTE_CAP," \
                 "but the GPU has $cap; build it with --build-arg CUDA_COMPUTE_CAP=$cap" >&2
            exit 1
        fi
    done
fi
exec /usr/local/bin/renderq "$@"
