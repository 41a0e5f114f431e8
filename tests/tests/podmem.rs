//! A worker confined the way a Kubernetes pod is: in a real memory cgroup
//! whose limit is far below the host's memory. It must plan from the limit,
//! not from `/proc/meminfo`: a job whose untiled render needs twice the
//! limit is rendered in tiles, in one attempt, and nothing is OOM-killed.
//! Skipped by name where this machine cannot make a memory cgroup (not
//! root, or no memory controller in that cgroup version).

use std::process::Stdio;

use serde_json::Value;
use stylefarm_engine::RenderParams;
use stylefarm_tests::memcg::{CgroupVersion, MemoryCgroup};
use stylefarm_tests::{all_succeeded, bin, fixture, jobs, Farm};

/// A pod's limit, as in the issue that found the OOM kill.
const LIMIT: u64 = 5 << 29; // 2.5 GiB

#[test]
fn a_worker_in_a_cgroup_v1_pod_tiles_a_render_twice_its_limit() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    render_in_a_pod(CgroupVersion::V1);
}

#[test]
fn a_worker_in_a_cgroup_v2_pod_tiles_a_render_twice_its_limit() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    render_in_a_pod(CgroupVersion::V2);
}

/// The smallest 4:3 size whose untiled render needs at least `bytes` by the
/// memory model.
fn size_needing(bytes: u64) -> (u32, u32) {
    let params = RenderParams::default();
    (50..).map(|k| (16 * k, 12 * k)).find(|&(w, h)| params.estimated_peak_bytes(w, h) >= bytes).unwrap()
}

fn render_in_a_pod(version: CgroupVersion) {
    let pod = match MemoryCgroup::create(version, LIMIT) {
        Ok(g) => g,
        Err(why) => {
            eprintln!("skipped (cgroup {version:?}): {why}");
            return;
        }
    };
    let mut farm = Farm::start();
    let log = farm.dir.path().join("worker.log");
    let worker = pod
        .command(&bin("farm-worker"))
        .args(["--coordinator", &farm.url, "--device", "cpu", "--threads", "2", "--name", "pod"])
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    farm.workers.0.push(worker);

    // It registers what its pod leaves it, not the host's memory.
    let registered = wait_for_worker(&farm);
    let memory: u64 = registered["memory_bytes"].as_str().and_then(|m| m.parse().ok()).unwrap_or_else(|| panic!("{registered}"));
    assert!(memory > 0 && memory <= LIMIT, "registered {memory} bytes in a pod of {LIMIT}");

    let (w, h) = size_needing(2 * LIMIT);
    let (c, s) = (fixture("content.png"), fixture("style.png"));
    let id = farm.submit(&["--content", &c, "--style", &s, "--size", &format!("{w}x{h}"), "--iters", "2"]);
    let st = farm.wait_for(&id, "the job to end", |st| jobs(st).iter().all(|j| matches!(j["state"].as_str(), Some("SUCCEEDED" | "FAILED" | "CANCELLED"))));
    let job = &jobs(&st)[0];
    let logs = farm.farmctl(&["logs", job["job_id"].as_str().unwrap_or_default()]);
    let attempt_log = String::from_utf8_lossy(&logs.stdout).into_owned();
    let peak = pod.peak_bytes();
    eprintln!(
        "cgroup {version:?}: limit {} MiB, registered {} MiB, {w}x{h} needs {} MiB untiled; peak {} MiB, OOM kills {}; {}",
        LIMIT >> 20,
        memory >> 20,
        RenderParams::default().estimated_peak_bytes(w, h) >> 20,
        peak.map_or("?".into(), |p| (p >> 20).to_string()),
        pod.oom_kills(),
        attempt_log.lines().find(|l| l.contains("tiles of")).unwrap_or("no tiling line"),
    );
    assert!(all_succeeded(&st), "{st}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    assert_eq!(job["attempts"], 1, "one attempt, no OOM kill and retry: {job}");
    assert_eq!(pod.oom_kills(), 0, "nothing in the pod was OOM-killed");
    assert!(attempt_log.contains("rendering in tiles of"), "the worker tiled: {attempt_log}");
    if let Some(peak) = peak {
        assert!(peak <= LIMIT, "peak {peak} within the limit");
    }
}

/// The one worker's row of `farmctl workers --json`, once it registered.
fn wait_for_worker(farm: &Farm) -> Value {
    let start = std::time::Instant::now();
    loop {
        let o = farm.farmctl(&["workers", "--json"]);
        if o.status.success() {
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            if let Some(w) = v["workers"].as_array().and_then(|ws| ws.first()) {
                return w.clone();
            }
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "the worker in the pod never registered");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
