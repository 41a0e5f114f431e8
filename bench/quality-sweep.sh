#!/usr/bin/env bash
# Is the fast preset as good as the recipe on every sample pair? Every
# sample photo × every sample painting at 333x250, seeds 0 and 1: the
# recipe (Adam, 300 iterations), the fast preset, and plain L-BFGS (60
# iterations) for comparison. Prints per render the time to "as good as
# the recipe" (style loss at or below the recipe's final, content loss at
# most 10% above it) over the recipe's time; writes a contact sheet
# (content, style, recipe, fast, L-BFGS per row) and results.jsonl.
#
#   bench/quality-sweep.sh                 # OUT=sweep (about 45 min on 2 cores)
#   SEEDS=0 CONTENT=samples/content/chelsea.jpg bench/quality-sweep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-sweep}
SEEDS=${SEEDS:-0,1}
CONTENT=${CONTENT:-samples/content/*.jpg}
STYLE=${STYLE:-samples/styles/*.jpg}
cargo build --release --locked -q -p farmctl
FARMCTL=${CARGO_TARGET_DIR:-target}/release/farmctl
"$FARMCTL" weights fetch >/dev/null
"$FARMCTL" sweep --content "$CONTENT" --style "$STYLE" --size 333x250 --seeds "$SEEDS" -o "$OUT" \
  --config '{"preset":"fast"}' --config '{"optimizer":"lbfgs","iters":60}'
