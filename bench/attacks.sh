#!/usr/bin/env bash
# The hostile-client attacks of tests/tests/hostile.rs (the test profile:
# dependencies optimised, the farm's own crates at opt-level 1),
# with their figures: for each attack, another user's GetCollection
# latency while it runs (p50, p99, max), what the coordinator's memory did,
# and how the attack was refused. The test asserts the limits (p99 under
# 100 ms, no strike for a healthy worker); this prints what they were.
#   bench/attacks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --bins
export STYLEFARM_WEIGHTS="${STYLEFARM_WEIGHTS:-$("${CARGO_TARGET_DIR:-target}/debug/farmctl" weights path)}"
echo "bench/attacks.sh, $(date -u +%F), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
cargo test --locked -p stylefarm-tests --test hostile -- --nocapture 2>/dev/null \
  | grep -E '^(  |[a-z0-9])' | grep -v '^test \|^running'
