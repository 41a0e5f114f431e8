#!/usr/bin/env bash
# The pictures in the README, from a real farm: renders the sample
# collection (3 photos × 2 paintings, the fast preset) on a local farm,
# fetches its contact sheet, and photographs the dashboard with headless
# Chromium at 1920 px (the collection's grid) and 390 px (a job's page).
#   bench/screenshots.sh            # writes docs/sample_contact_sheet.png,
#                                   # docs/dashboard_1920.png, docs/dashboard_390.png
#   MAX_SIDE=256 BIN=target/debug bench/screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
MAX_SIDE=${MAX_SIDE:-320}
DOCS=${DOCS:-docs}
WORK=$(mktemp -d)
command -v chromium >/dev/null || { echo "screenshots.sh: chromium is needed (apt-get install chromium)" >&2; exit 1; }
[ -x "$BIN/farmctl" ] || { echo "screenshots.sh: no $BIN/farmctl; cargo build --release --bins (or BIN=...)" >&2; exit 1; }
"$BIN/farmctl" weights fetch >/dev/null

"$BIN/farmctl" up --data-dir "$WORK/data" --workers 2 --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 > "$WORK/up.url" &
UP=$!
trap 'kill -TERM $UP 2>/dev/null; wait $UP 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do [ "$(wc -l < "$WORK/up.url")" -ge 2 ] && break; sleep 0.1; done
URL=$(head -1 "$WORK/up.url")
PAGE=$(sed -n 2p "$WORK/up.url")
farmctl() { "$BIN/farmctl" --coordinator "$URL" "$@"; }

ID=$(farmctl submit --name "Samples in two styles" --content 'samples/content/*.jpg' \
  --style samples/styles/starry_night.jpg --style samples/styles/great_wave.jpg \
  --max-side "$MAX_SIDE" --preset fast --checkpoint-every 10 | tail -1)
farmctl watch "$ID" >/dev/null 2>&1 || true
farmctl fetch "$ID" -o "$WORK/out" >/dev/null
cp "$WORK/out/contact_sheet.png" "$DOCS/sample_contact_sheet.png"
JOB=$(farmctl status "$ID" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["job_id"])')

# A page's picture, through chromedriver's WebDriver API (plain HTTP):
# the page loads, reads the API and opens its event stream, then is shot.
command -v chromedriver >/dev/null || { echo "screenshots.sh: chromedriver is needed (apt-get install chromium-driver)" >&2; exit 1; }
DRIVER_PORT=${DRIVER_PORT:-9515}
chromedriver --port="$DRIVER_PORT" >/dev/null 2>&1 &
DRIVER=$!
trap 'kill $DRIVER 2>/dev/null; kill -TERM $UP 2>/dev/null; wait $UP 2>/dev/null || true; rm -rf "$WORK"' EXIT
sleep 1
WD="http://127.0.0.1:$DRIVER_PORT"
shot() { # WIDTH HEIGHT URL FILE  (under 500 px wide: a phone, emulated,
          # as Chromium's own windows are never that narrow)
  local caps session mobile=""
  [ "$1" -lt 500 ] && mobile=$(printf ',"mobileEmulation":{"deviceMetrics":{"width":%s,"height":%s,"pixelRatio":1.0,"mobile":true}}' "$1" "$2")
  caps=$(printf '{"capabilities":{"alwaysMatch":{"goog:chromeOptions":{"args":["--headless=new","--no-sandbox","--disable-gpu","--disable-dev-shm-usage","--hide-scrollbars","--window-size=%s,%s"]%s}}}}' "$1" "$2" "$mobile")
  session=$(curl -sf -X POST -H 'Content-Type: application/json' -d "$caps" "$WD/session" | python3 -c 'import json,sys; print(json.load(sys.stdin)["value"]["sessionId"])')
  curl -sf -X POST -H 'Content-Type: application/json' -d "{\"url\": \"$3\"}" "$WD/session/$session/url" >/dev/null
  sleep 4
  curl -sf "$WD/session/$session/screenshot" | python3 -c 'import base64,json,sys; sys.stdout.buffer.write(base64.b64decode(json.load(sys.stdin)["value"]))' > "$4"
  curl -sf -X DELETE "$WD/session/$session" >/dev/null
}
shot 1920 1080 "${PAGE}#/c/$ID" "$DOCS/dashboard_1920.png"
shot 390 1100 "${PAGE}#/j/$JOB" "$DOCS/dashboard_390.png"
echo "wrote $DOCS/sample_contact_sheet.png $DOCS/dashboard_1920.png $DOCS/dashboard_390.png"
