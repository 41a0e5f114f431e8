#!/usr/bin/env bash
# The dashboard with a 10,000-job collection (100 photos x 100 paintings):
# the first screen of its grid in headless Chromium, and the API's latency,
# with and without 100 other browsers' event streams open.
#   bench/dashboard.sh            # needs chromium and chromium-driver
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release --bins
BIN="${CARGO_TARGET_DIR:-target}/release"
WORK=$(mktemp -d)
trap 'kill $COORD 2>/dev/null || true; rm -rf "$WORK"' EXIT

# 200 distinct 8x8 PNGs.
python3 - "$WORK/img" <<'PY'
import os, struct, sys, zlib
d = sys.argv[1]; os.makedirs(d)
def png(path, seed):
    raw = b"".join(b"\0" + bytes((seed * 7 + x * 13 + y * 29) % 256 for x in range(8 * 3)) for y in range(8))
    chunk = lambda t, b: struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
for i in range(100):
    png(f"{d}/c{i:03}.png", i); png(f"{d}/s{i:03}.png", 1000 + i)
PY

"$BIN/farm-coordinator" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir "$WORK/data" > "$WORK/coord.out" 2>/dev/null &
COORD=$!
for _ in $(seq 100); do [ "$(wc -l < "$WORK/coord.out")" -ge 2 ] && break; sleep 0.1; done
URL=http://$(head -1 "$WORK/coord.out" | awk '{print $4}')
PAGE=$(sed -n 2p "$WORK/coord.out" | awk '{print $4}')
ID=$("$BIN/farmctl" --coordinator "$URL" submit --name bench --content "$WORK/img/c*.png" --style "$WORK/img/s*.png" --size 8x8 --iters 1 | tail -1)
for streams in 0 100; do
  python3 bench/dashboard.py --page "$PAGE" --collection "$ID" --streams "$streams" --runs 5
done
