#!/usr/bin/env bash
# Preemption on a full farm: two CPU workers render a long collection (two
# jobs); a rush collection (priority 10) is submitted, and the time until
# its job runs is measured, split where the attempt's log and the job's
# state say:
#   asked    submit -> the worker logs "asked for the job back" (the
#            preemption pass, and the worker's next heartbeat)
#   released asked -> "checkpointed; giving the job back" (the rest of the
#            iteration under way, and the checkpoint's write)
#   running  submit -> the rush job no longer QUEUED (adds the release call
#            and the freed worker's next lease)
# It also prints the long jobs' seconds per iteration and the heartbeat
# period, the bound's other terms.
#   TRIALS=5 SIZE=256 scripts/bench-preemption.sh
#   BIN=/path/to/release scripts/bench-preemption.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${TRIALS:-5}
SIZE=${SIZE:-256}
HEARTBEAT=${HEARTBEAT:-3}

# BIN=DIR runs binaries built elsewhere (farmctl, farm-coordinator, farm-worker).
if [ -z "${BIN:-}" ]; then
  cargo build --locked --release --bins
  BIN="${CARGO_TARGET_DIR:-target}/release"
fi
"$BIN/farmctl" weights fetch >/dev/null

DIR=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
"$BIN/farm-coordinator" --listen 127.0.0.1:0 --data-dir "$DIR/data" --heartbeat-seconds "$HEARTBEAT" > "$DIR/url" 2> "$DIR/coordinator.log" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$DIR/url" ] && break; sleep 0.1; done
URL="http://$(head -1 "$DIR/url" | sed 's/.*listening on //')"
for w in 1 2; do
  "$BIN/farm-worker" --coordinator "$URL" --device cpu --threads 1 --name "w$w" 2> "$DIR/w$w.log" &
  PIDS+=($!)
done

FARMCTL="$BIN/farmctl" URL="$URL" TRIALS="$TRIALS" SIZE="$SIZE" HEARTBEAT="$HEARTBEAT" python3 - <<'EOF'
import datetime, json, os, random, subprocess, time

farmctl, url = os.environ["FARMCTL"], os.environ["URL"]
trials, size, heartbeat = int(os.environ["TRIALS"]), os.environ["SIZE"], os.environ["HEARTBEAT"]
contents = ["samples/content/chelsea.jpg", "samples/content/coffee.jpg", "samples/content/astronaut.jpg"]
styles = ["samples/styles/starry_night.jpg", "samples/styles/great_wave.jpg", "samples/styles/composition_vii.jpg"]

def ctl(*args):
    return subprocess.run([farmctl, "--coordinator", url, *args], check=True, capture_output=True, text=True).stdout

def jobs(cid):
    return json.loads(ctl("status", cid, "--json"))["jobs"]

def stamp(log, text):
    line = next(l for l in log.splitlines() if text in l)
    return datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()

rows = []
for trial in range(trials):
    c, s = contents[trial % len(contents)], styles[(trial // len(contents) + trial) % len(styles)]
    long = ctl("submit", "--content", c, "--style", s, "--max-side", size, "--iters", "2000", "--checkpoint-every", "50",
               "--variant", f"seed={trial}", "--variant", f"seed={trial + 100}").split()[-1]
    while True:
        js = jobs(long)
        if all(j["state"] == "RUNNING" and j["progress"]["iteration"] >= 5 for j in js):
            break
        time.sleep(0.2)
    first = {j["job_id"]: (j["progress"]["iteration"], time.time()) for j in js}
    # Progress arrives with heartbeats: submit at a random point between
    # two (right after one is the worst case, a whole period to wait).
    time.sleep(3 + random.uniform(0, float(heartbeat)))
    js = jobs(long)
    per_iter = sum((time.time() - first[j["job_id"]][1]) / max(1, j["progress"]["iteration"] - first[j["job_id"]][0]) for j in js) / len(js)
    submitted = time.time()
    rush = ctl("submit", "--content", c, "--style", s, "--max-side", "64", "--iters", "5", "--priority", "10", "--variant", f"seed={trial + 1000}").split()[-1]
    while jobs(rush)[0]["state"] == "QUEUED":
        time.sleep(0.02)
    running = time.time() - submitted
    preempted = [j for j in jobs(long) if j["attempts"] >= 1 and j["state"] == "QUEUED"]
    log = ctl("logs", preempted[0]["job_id"], "--attempt", "1") if preempted else ""
    for _ in range(50):
        if "giving the job back" in log:
            break
        time.sleep(0.1)
        log = ctl("logs", preempted[0]["job_id"], "--attempt", "1")
    asked, released = stamp(log, "asked for the job back") - submitted, stamp(log, "giving the job back") - submitted
    rows.append((c.split("/")[-1], s.split("/")[-1], per_iter, asked, released - asked, running))
    print(f"trial {trial + 1}: {rows[-1][0]} x {rows[-1][1]} at {size} px: {per_iter:.2f} s/iteration; "
          f"asked {asked:.2f} s, released {released - asked:.2f} s later, rush job running {running:.2f} s after its submit", flush=True)
    ctl("cancel", long)
    while jobs(rush)[0]["state"] != "SUCCEEDED":
        time.sleep(0.2)

runs = sorted(r[5] for r in rows)
print(f"rush job running after its submit: median {runs[len(runs) // 2]:.2f} s, max {runs[-1]:.2f} s over {len(runs)} trials; "
      f"bound (1 iteration + 1 checkpoint + 1 heartbeat of {heartbeat} s) per trial: "
      + ", ".join(f"{r[2] + float(heartbeat):.2f} s + checkpoint" for r in rows))
EOF
