#!/usr/bin/env bash
# Wall time each configuration needs to reach the loss of the assignment's
# recipe (Adam, lr 2, 300 iterations) on a sample pair, at 333x250.
#
#   bench/time-to-loss.sh         # CONTENT=samples/content/chelsea.jpg STYLE=samples/styles/starry_night.jpg
#
# Each render logs its full-size losses with the seconds since that pass
# started; everything else the command did (loading, the coarse passes of a
# coarse-to-fine render, writing) is counted in front of it, from the whole
# command's wall time, so the figures err on the slow side.
set -euo pipefail
cd "$(dirname "$0")/.."
CONTENT=${CONTENT:-samples/content/chelsea.jpg}
STYLE=${STYLE:-samples/styles/starry_night.jpg}
cargo build --release --locked -q -p farmctl
FARMCTL=${CARGO_TARGET_DIR:-target}/release/farmctl
DIR=$(mktemp -d)
render() { # name, extra flags...
  local name=$1; shift
  /usr/bin/time -f "%e" -o "$DIR/$name.wall" "$FARMCTL" render --content "$CONTENT" --style "$STYLE" --size 333x250 \
    --log "$DIR/$name.jsonl" -o "$DIR/$name.png" "$@" >/dev/null 2>&1
}
render recipe --iters 300
render lbfgs --optimizer lbfgs --iters 60
render lbfgs-c2f --optimizer lbfgs --scales 0.5 --coarse-iters 60 --iters 40
render adam-c2f --scales 0.5 --coarse-iters 150 --iters 150
python3 - "$DIR" <<'PY'
import json, sys
d = sys.argv[1]
def rows(path):
    return [json.loads(l) for l in open(path) if l.strip()]
target = rows(f"{d}/recipe.jsonl")[-1]["total"]
print(f"target: the recipe's final total loss, {target:.4g}")
print(f"{'configuration':>12} {'wall s':>8} {'s to target':>12} {'final loss':>11} {'vs recipe':>10}")
base = None
for name in ["recipe", "lbfgs", "lbfgs-c2f", "adam-c2f"]:
    full = rows(f"{d}/{name}.jsonl")
    wall = float(open(f"{d}/{name}.wall").read().split()[-1])
    offset = wall - full[-1]["seconds"]
    hit = next((r["seconds"] + offset for r in full if r["total"] <= target), None)
    base = base or hit
    ratio = f"{hit / base:.2f}" if hit else "-"
    print(f"{name:>12} {wall:>8.1f} {hit if hit is None else round(hit, 1)!s:>12} {full[-1]['total']:>11.4g} {ratio:>10}")
PY
echo "logs and images: $DIR"
