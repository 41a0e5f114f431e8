//! A worker's state tells what happened to it, as an operator reads it
//! from `farmctl workers`: real coordinator and worker processes on
//! loopback, killed with SIGKILL and stopped with SIGTERM.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use stylefarm_tests::{all_succeeded, fixture, jobs, Farm, LEASE};

fn said(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `farmctl workers --json [--all]`: a ListWorkersResponse's workers.
fn workers(farm: &Farm, all: bool) -> Vec<Value> {
    let o = farm.farmctl(if all { &["workers", "--json", "--all"] } else { &["workers", "--json"] });
    assert!(o.status.success(), "{}", said(&o));
    serde_json::from_slice::<Value>(&o.stdout).unwrap()["workers"].as_array().unwrap().clone()
}

/// The listed workers named `name`.
fn named(list: &[Value], name: &str) -> Vec<Value> {
    list.iter().filter(|w| w["name"] == name).cloned().collect()
}

/// Polls `farmctl workers` until `pred` holds of the one worker named
/// `name`, within `limit`; returns it.
fn wait_worker(farm: &Farm, name: &str, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let list = workers(farm, false);
        if let [w] = named(&list, name).as_slice() {
            if pred(w) {
                return w.clone();
            }
        }
        assert!(start.elapsed() < limit, "{name} never became {what} within {limit:?}: {list:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn act(farm: &Farm, action: &str, id: &str) -> Output {
    farm.farmctl(&["workers", action, id])
}

fn one_job(farm: &Farm, iters: &str) -> String {
    let (c, s) = (fixture("content.png"), fixture("style.png"));
    farm.submit(&["--content", &c, "--style", &s, "--size", "48x36", "--iters", iters, "--checkpoint-every", "5"])
}

#[test]
fn a_workers_state_tells_what_happened_to_it() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let lease = Duration::from_secs(LEASE.parse().unwrap());
    let mut farm = Farm::start();
    farm.add_worker("keeper");
    let doomed = farm.add_worker("doomed");
    let keeper = wait_worker(&farm, "keeper", "online", Duration::from_secs(60), |w| w["state"] == "ONLINE");
    let keeper_id = keeper["worker_id"].as_str().unwrap().to_string();
    wait_worker(&farm, "doomed", "online", Duration::from_secs(60), |w| w["state"] == "ONLINE");

    // Drained while idle, keeper leases nothing: the job goes to doomed.
    let o = act(&farm, "drain", &keeper_id);
    assert!(o.status.success() && said(&o).contains("drained"), "{}", said(&o));
    let long = one_job(&farm, "400");
    let st = farm.wait_for(&long, "a checkpoint on doomed", |s| jobs(s)[0]["state"] == "RUNNING" && jobs(s)[0]["progress"]["iteration"].as_u64() >= Some(10));
    assert!(jobs(&st)[0]["worker"].as_str().unwrap().starts_with("doomed-"), "{st}");

    // SIGKILL: lost within a lease length (and a poll); the job is not
    // the drained keeper's to take.
    farm.kill_worker(doomed);
    let killed = Instant::now();
    let lost = wait_worker(&farm, "doomed", "lost", lease * 3, |w| w["state"] == "LOST");
    assert!(killed.elapsed() <= lease + Duration::from_secs(2), "lost after {:?}", killed.elapsed());
    assert!(lost["last_seen_unix"].as_f64().is_some());
    let st = farm.wait_for(&long, "the lapsed lease to requeue the job", |s| jobs(s)[0]["state"] == "QUEUED");
    assert_eq!(jobs(&st)[0]["requeues"], 1, "a lost worker costs the job a requeue, not a failure: {st}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(jobs(&farm.status(&long).unwrap())[0]["state"], "QUEUED", "a drained worker leases nothing");

    // Resumed, keeper takes it from doomed's checkpoint; drained while it
    // holds it, it finishes that job and takes no other.
    assert!(act(&farm, "resume", &keeper_id).status.success());
    farm.wait_for(&long, "keeper to take the job", |s| jobs(s)[0]["state"] == "RUNNING" && jobs(s)[0]["worker"] == keeper_id.as_str());
    let o = act(&farm, "drain", &keeper_id);
    assert!(said(&o).contains("draining: it finishes"), "{}", said(&o));
    let next = one_job(&farm, "2");
    let st = farm.wait_for(&long, "the held job to finish", all_succeeded);
    assert!(jobs(&st)[0]["started_from"].as_u64() >= Some(5), "resumed from doomed's checkpoint: {st}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(jobs(&farm.status(&next).unwrap())[0]["state"], "QUEUED", "drained: nothing new after its job");
    let w = wait_worker(&farm, "keeper", "drained and idle", Duration::from_secs(5), |w| w["current_job"] == "");
    assert_eq!((w["state"].as_str(), w["draining"].as_bool()), (Some("ONLINE"), Some(true)));
    assert!(act(&farm, "resume", &keeper_id).status.success());
    farm.wait_for(&next, "the next job after resume", all_succeeded);

    // Forget: refused for an online worker, done for a lost one, which
    // leaves the list and stays in the history.
    let o = act(&farm, "forget", &keeper_id);
    assert!(!o.status.success() && said(&o).contains("online"), "{}", said(&o));
    let doomed_id = lost["worker_id"].as_str().unwrap().to_string();
    assert!(act(&farm, "forget", &doomed_id).status.success());
    assert!(named(&workers(&farm, false), "doomed").is_empty(), "forgotten: off the list");
    let history = named(&workers(&farm, true), "doomed");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["state"], "FORGOTTEN");

    // A second worker under keeper's name, while keeper lives, is refused:
    // keeper keeps its name (and would keep its job); the newcomer waits.
    let second = farm.add_worker("keeper");
    std::thread::sleep(Duration::from_secs(3));
    let rows = named(&workers(&farm, true), "keeper");
    assert_eq!(rows.len(), 1, "one keeper: {rows:?}");
    assert_eq!((rows[0]["worker_id"].as_str(), rows[0]["state"].as_str()), (Some(keeper_id.as_str()), Some("ONLINE")));
    assert!(farm.workers.0[0].try_wait().unwrap().is_none(), "the live keeper was not evicted");
    // Keeper dies; once it is gone (a lease length), the waiting worker
    // takes its name and replaces its row.
    farm.kill_worker(0);
    let fresh = wait_worker(&farm, "keeper", "the newcomer to take the name", Duration::from_secs(30), |w| w["worker_id"] != keeper_id.as_str());
    assert_eq!(fresh["state"], "ONLINE");
    let replaced = workers(&farm, true).into_iter().find(|w| w["worker_id"] == keeper_id.as_str()).unwrap();
    assert_eq!(replaced["state"], "REPLACED");

    // SIGTERM: it says goodbye and reads stopped at once.
    let pid = farm.workers.0[second].id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let stopped = wait_worker(&farm, "keeper", "stopped", Duration::from_secs(10), |w| w["state"] == "STOPPED");
    assert_eq!(stopped["worker_id"], fresh["worker_id"]);
    assert!(farm.workers.0[second].wait().unwrap().success(), "a stopped worker exits 0");
    let o = farm.farmctl(&["workers"]);
    let text = said(&o);
    assert!(text.contains("stopped") && !text.contains("doomed"), "{text}");
}

/// Workers started without `--name` on one host get distinct names that
/// stay: both register and render (the second no longer replaces the
/// first), a restarted one takes the name of the one that died, and an
/// operator drains a worker by the name the list shows.
#[test]
fn unnamed_workers_on_one_host_both_render_under_names_that_stay() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let mut farm = Farm::start();
    // Their numbered slots live in the temporary folder: this test's own.
    let tmp = farm.dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let unnamed = |farm: &mut Farm| {
        let w = Command::new(stylefarm_tests::bin("farm-worker"))
            .args(["--coordinator", &farm.url, "--device", "cpu", "--threads", "1"])
            .env("TMPDIR", &tmp)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        farm.workers.0.push(w);
        farm.workers.0.len() - 1
    };
    let host = stylefarm_shared::host::name().expect("this Linux host has a name");
    let (first, second) = (format!("{host}-cpu"), format!("{host}-cpu-2"));
    // One after the other: two started at once race for the first slot,
    // and the test must know which process holds which name.
    unnamed(&mut farm);
    let a = wait_worker(&farm, &first, "online", Duration::from_secs(60), |w| w["state"] == "ONLINE");
    let w2 = unnamed(&mut farm);
    let b = wait_worker(&farm, &second, "online", Duration::from_secs(60), |w| w["state"] == "ONLINE");
    let (c, s) = (fixture("content.png"), fixture("style.png"));
    let id = farm.submit(&["--content", &c, "--content", &fixture("init.png"), "--style", &s, "--size", "48x36", "--iters", "40"]);
    let st = farm.wait_for(&id, "both jobs to succeed", all_succeeded);
    let by: std::collections::BTreeSet<&str> = jobs(&st).iter().map(|j| j["worker"].as_str().unwrap()).collect();
    let ids: std::collections::BTreeSet<&str> = [a["worker_id"].as_str().unwrap(), b["worker_id"].as_str().unwrap()].into();
    assert_eq!(by, ids, "each unnamed worker rendered one job");

    // The second dies; an unnamed worker started after it takes its name
    // (and replaces its row once it counts as gone), not a third one.
    farm.kill_worker(w2);
    unnamed(&mut farm);
    let back = wait_worker(&farm, &second, "back under its name", Duration::from_secs(60), |w| w["worker_id"] != b["worker_id"] && w["state"] == "ONLINE");
    assert!(named(&workers(&farm, false), &format!("{host}-cpu-3")).is_empty(), "no third name");

    // Drained by the name the list shows.
    let o = act(&farm, "drain", &second);
    assert!(o.status.success(), "{}", said(&o));
    let drained = wait_worker(&farm, &second, "draining", Duration::from_secs(5), |w| w["draining"] == true);
    assert_eq!(drained["worker_id"], back["worker_id"]);
    let o = act(&farm, "drain", "nobody-by-that-name");
    assert!(!o.status.success() && said(&o).contains("nobody-by-that-name"), "{}", said(&o));
}
