//! Storage with a lifecycle: `farmctl delete` removes a collection's rows
//! and every object it left (its inputs too, where no other collection
//! uses them), refuses one still at work unless `--cancel`, answers a
//! repeat OK, and a coordinator SIGKILLed half-way through finishes the
//! delete when it starts again, touching nothing else. What each
//! collection stores, and the farm in all, is what `status` and
//! `/metrics` say, to the byte.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use stylefarm_tests::{all_succeeded, bin, fixture, free_port, jobs, require, scrape_metrics, Farm, Need};

/// Every file below `dir` (relative paths), none if it is gone.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                found.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    found.sort();
    found
}

fn storage(farm: &Farm) -> PathBuf {
    farm.dir.path().join("data/storage")
}

fn small(farm: &Farm, content: &str, style: &str, iters: &str) -> String {
    farm.submit(&["--content", &fixture(content), "--style", &fixture(style), "--size", "16x12", "--iters", iters, "--checkpoint-every", "2"])
}

/// The bytes of every file below `dir`.
fn size_of(dir: &Path) -> u64 {
    files(dir).iter().map(|f| std::fs::metadata(dir.join(f)).unwrap().len()).sum()
}

/// A uint64 of the contract's JSON (a string).
fn uint64(v: &Value) -> u64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not a uint64: {v}"))
}

/// `farmctl status --json` of the farm: the storage in all.
fn stored_in_all(farm: &Farm) -> u64 {
    let o = farm.farmctl(&["status", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    uint64(&v["collections"]["stored_bytes"])
}

/// The value of a gauge without labels on `/metrics`.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    scrape_metrics(metrics).lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_deleted_collection_leaves_nothing_of_its_own_and_touches_nothing_else() {
    require!(Need::Binaries, Need::Weights);
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut farm = Farm::start_with(&["--metrics-listen", &metrics]);
    farm.add_worker("w");
    // A and B share the photo; only A uses style.png.
    let a = small(&farm, "content.png", "style.png", "4");
    let b = small(&farm, "content.png", "init.png", "4");
    farm.wait_for(&a, "A to succeed", all_succeeded);
    farm.wait_for(&b, "B to succeed", all_succeeded);
    let root = storage(&farm);
    let before_b = files(&root.join(format!("collections/{b}")));
    // The folder is whole once the job reads SUCCEEDED: the worker writes
    // its log before it reports the job done.
    assert!(before_b.iter().any(|f| f.ends_with("worker.log")), "B's log is there when B succeeds: {before_b:?}");
    let inputs_before = files(&root.join("inputs"));
    assert_eq!(inputs_before.len(), 3, "{inputs_before:?}");

    // What A stores: its folder (the succeeded job's checkpoints gone) and
    // its photo and painting; the farm: every folder, each input once.
    let photo_and_painting = ["content.png", "style.png"].iter().map(|f| std::fs::metadata(fixture(f)).unwrap().len()).sum::<u64>();
    let a_stores = || size_of(&root.join(format!("collections/{a}"))) + photo_and_painting;
    let in_all = || size_of(&root.join("collections")) + size_of(&root.join("inputs"));
    wait_until("A's and the farm's bytes stored to be measured", Duration::from_secs(30), || {
        uint64(&farm.status(&a).unwrap()["stored_bytes"]) == a_stores() && stored_in_all(&farm) == in_all() && gauge(&metrics, "stylefarm_stored_bytes") == Some(in_all() as f64)
    });
    assert!(files(&root.join(format!("collections/{a}"))).iter().all(|f| !f.to_string_lossy().contains("checkpoint")), "a succeeded job keeps no checkpoint");
    let said = String::from_utf8_lossy(&farm.farmctl(&["status", &a]).stdout).into_owned();
    assert!(said.lines().next().unwrap().ends_with(&format!("{} stored", stylefarm_shared::budget::human(a_stores()))), "{said}");
    eprintln!("A stores {} bytes; the farm {} in all", a_stores(), in_all());

    let start = Instant::now();
    let o = farm.farmctl(&["delete", &a]);
    let took = start.elapsed();
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("delete of a 1-job collection: {} in {took:?}", said.trim());
    assert!(said.contains("deleted collection") && said.contains("objects") && !said.contains("leases end first"), "an ended collection goes at once: {said}");
    assert!(files(&root.join(format!("collections/{a}"))).is_empty(), "A's objects are gone");
    let inputs_after = files(&root.join("inputs"));
    assert_eq!(inputs_after.len(), 2, "style.png went, the shared photo stayed: {inputs_after:?}");
    assert_eq!(files(&root.join(format!("collections/{b}"))), before_b, "B untouched");
    assert!(farm.status(&a).is_none(), "A is NOT_FOUND");
    assert!(all_succeeded(&farm.status(&b).unwrap()));
    wait_until("the farm's total to drop by what A stored", Duration::from_secs(10), || stored_in_all(&farm) == in_all());
    let again = farm.farmctl(&["delete", &a]);
    assert!(again.status.success() && String::from_utf8_lossy(&again.stdout).contains(" 0 objects"), "a repeat is OK: {}", String::from_utf8_lossy(&again.stderr));
    let unknown = farm.farmctl(&["delete", "no-such-collection"]);
    assert!(!unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("no-such-collection"), "{}", String::from_utf8_lossy(&unknown.stderr));

    // Still at work: refused, naming what to do; --cancel deletes it.
    let c = small(&farm, "init.png", "style.png", "2000");
    farm.wait_for(&c, "C to run", |s| jobs(s)[0]["state"] == "RUNNING");
    let refused = farm.farmctl(&["delete", &c]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && why.contains("running") && why.contains("--cancel"), "{why}");
    assert!(farm.farmctl(&["delete", &c, "--cancel"]).status.success());
    assert!(farm.status(&c).is_none(), "hidden at once");
    // Its worker stops at its next heartbeat; whatever it wrote until then
    // goes with the sweep, and the worker is free for new work.
    wait_until("C's folder to empty", Duration::from_secs(30), || files(&root.join(format!("collections/{c}"))).is_empty());
    let d = small(&farm, "content.png", "init.png", "2");
    farm.wait_for(&d, "D, after C's deletion", all_succeeded);
}

#[test]
fn a_delete_cut_short_by_a_sigkill_is_finished_by_the_next_start() {
    require!(Need::Binaries, Need::Weights);
    let mut farm = Farm::start();
    farm.add_worker("w");
    let doomed = small(&farm, "content.png", "style.png", "2");
    let kept = small(&farm, "init.png", "init.png", "2");
    farm.wait_for(&doomed, "the doomed collection to succeed", all_succeeded);
    farm.wait_for(&kept, "the kept collection to succeed", all_succeeded);
    let root = storage(&farm);
    // 10,000 objects of its own, so the kill lands while they are going.
    let junk = root.join(format!("collections/{doomed}/junk"));
    std::fs::create_dir_all(&junk).unwrap();
    for i in 0..10_000 {
        std::fs::write(junk.join(format!("{i:05}")), [0u8; 512]).unwrap();
    }
    let kept_files = files(&root.join(format!("collections/{kept}")));
    let inputs_before = files(&root.join("inputs"));

    let mut delete = Command::new(bin("farmctl")).args(["--coordinator", &farm.url, "--wait", "1", "delete", &doomed]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_until("the delete to start", Duration::from_secs(20), || std::fs::read_dir(&junk).map_or(0, |d| d.count()) < 10_000);
    farm.kill_coordinator();
    let left = std::fs::read_dir(&junk).map_or(0, |d| d.count());
    eprintln!("SIGKILLed with {left} of 10000 objects left");
    let _ = delete.wait();
    assert!(left > 0, "the kill came after the delete had finished: lengthen the junk");

    farm.start_coordinator();
    wait_until("the restarted coordinator to finish the delete", Duration::from_secs(30), || files(&root.join(format!("collections/{doomed}"))).is_empty());
    assert!(farm.status(&doomed).is_none());
    assert_eq!(files(&root.join(format!("collections/{kept}"))), kept_files, "the other collection untouched");
    let inputs_after = files(&root.join("inputs"));
    assert_eq!(inputs_after.len(), 1, "the doomed one's photo and painting went, the kept one's stayed: {inputs_after:?}");
    assert!(inputs_before.contains(&inputs_after[0]));
    assert!(all_succeeded(&farm.status(&kept).unwrap()));
    assert!(farm.farmctl(&["delete", &doomed]).status.success(), "and a repeat is OK");
}

/// `--keep-finished-days`: a collection that ended longer ago than that is
/// deleted with everything it left; one still at work is kept. Nonsense
/// is refused by name.
#[test]
fn collections_past_keep_finished_days_go_and_running_ones_stay() {
    require!(Need::Binaries, Need::Weights);
    let refused = Command::new(bin("farm-coordinator")).args(["--keep-finished-days", "0"]).output().unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("not a number of days above 0"), "{}", String::from_utf8_lossy(&refused.stderr));

    // 0.00005 days: 4.3 s.
    let mut farm = Farm::start_with(&["--keep-finished-days", "0.00005"]);
    farm.add_worker("w");
    let ended = small(&farm, "content.png", "style.png", "2");
    farm.wait_for(&ended, "it to succeed", all_succeeded);
    let busy = small(&farm, "init.png", "style.png", "100000");
    farm.wait_for(&busy, "the long one to run", |s| jobs(s)[0]["state"] == "RUNNING");
    let root = storage(&farm);
    wait_until("the ended collection to be deleted", Duration::from_secs(30), || farm.status(&ended).is_none() && files(&root.join(format!("collections/{ended}"))).is_empty());
    let still = farm.status(&busy).expect("the running collection is kept");
    assert_eq!(jobs(&still)[0]["state"], "RUNNING");
    assert!(farm.farmctl(&["delete", &busy, "--cancel"]).status.success());
}
