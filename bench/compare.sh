#!/usr/bin/env bash
# Side by side on this machine, in one run: `farmctl bench` (this engine)
# against the same losses in PyTorch (bench/torch_bench.py), fp32 and bf16,
# with the ratio engine / PyTorch per size.
#
#   bench/compare.sh                       # 333x250 and 800x600, 2 threads
#   SIZES=512x512 ITERS=3 THREADS=2 bench/compare.sh
#
# Sets up what it needs: torch, numpy and safetensors from PyPI in
# ~/.cache/stylefarm/torch-venv (about 3 GB with the CUDA wheels PyPI's torch
# depends on; the CPU-only index is not reachable from every machine), the
# VGG-19 weights through `farmctl weights fetch`, and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-333x250,800x600}
ITERS=${ITERS:-5}
THREADS=${THREADS:-2}
VENV=${TORCH_VENV:-$HOME/.cache/stylefarm/torch-venv}

if ! "$VENV/bin/python" -c 'import torch, safetensors, numpy' 2>/dev/null; then
  echo "compare.sh: installing torch into $VENV (one time)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch numpy safetensors
fi
cargo build --release --locked -q -p farmctl
FARMCTL=${CARGO_TARGET_DIR:-target}/release/farmctl
WEIGHTS=$("$FARMCTL" weights path 2>/dev/null || true)
[ -f "$WEIGHTS" ] || { "$FARMCTL" weights fetch >&2; WEIGHTS=$("$FARMCTL" weights path); }

OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
# Each size in its own process, so each peak memory is that size's alone.
IFS=, read -ra SIZE_LIST <<<"$SIZES"
for s in "${SIZE_LIST[@]}"; do
  "$FARMCTL" bench --json --sizes "$s" --iters "$ITERS" --threads "$THREADS" --weights "$WEIGHTS" >>"$OUT"

  "$VENV/bin/python" bench/torch_bench.py --weights "$WEIGHTS" --sizes "$s" --iters "$ITERS" --threads "$THREADS" >>"$OUT"
  "$VENV/bin/python" bench/torch_bench.py --weights "$WEIGHTS" --sizes "$s" --iters "$ITERS" --threads "$THREADS" --bf16 >>"$OUT"
done

python3 - "$OUT" <<'PY'
import json, platform, subprocess, sys, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
print(f"bench/compare.sh, {datetime.date.today()}, {cpu}, {rows[0]['threads']} threads, median of timed iterations")
print(f"{'size':>9} {'engine':>14} {'s/iter':>8} {'fwd s':>7} {'loss s':>7} {'bwd s':>7} {'GFLOP/s':>8} {'peak MiB':>9} {'vs torch fp32':>14}")
for size in dict.fromkeys(r["size"] for r in rows):
    group = [r for r in rows if r["size"] == size]
    base = next((r for r in group if r["engine"] == "pytorch-fp32"), None)
    for r in group:
        ratio = f"{r['seconds_per_iter'] / base['seconds_per_iter']:.2f}x" if base else "-"
        print(f"{size:>9} {r['engine']:>14} {r['seconds_per_iter']:>8.3f} {r['forward_seconds']:>7.3f} "
              f"{r['loss_seconds']:>7.3f} {r['backward_seconds']:>7.3f} {r['gflops']:>8.1f} {r['peak_rss_mib']:>9.0f} {ratio:>14}")
PY
