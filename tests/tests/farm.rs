//! The farm end to end: a real coordinator and real workers as child
//! processes on loopback, driven by the real farmctl, then broken:
//! SIGKILLed workers, a SIGKILLed coordinator, a stale worker.
//!
//! The binaries come from the same target folder as this test
//! (`cargo build --bins` first; `scripts/test.sh` does).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use stylefarm_proto as pb;
use stylefarm_tests::{all_succeeded, bin, fetch_and_compare, fetch_and_compare_with, fixture, free_port, jobs, scrape_metrics, Farm, LEASE, RENDER};

#[test]
fn a_2x2_collection_completes_on_two_workers() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let mut farm = Farm::start();
    farm.add_worker("a");
    farm.add_worker("b");
    let (c1, c2, s1, s2) = (fixture("content.png"), fixture("init.png"), fixture("style.png"), fixture("init.png"));
    let id = farm.submit(&[&["--content", &c1, "--content", &c2, "--style", &s1, "--style", &s2], &RENDER[..]].concat());
    let o = farm.farmctl(&["watch", &id]);
    assert!(o.status.success(), "watch exits 0 when all succeed: {}", String::from_utf8_lossy(&o.stderr));
    let s = farm.status(&id).unwrap();
    assert_eq!(jobs(&s).len(), 4);
    assert!(all_succeeded(&s));
    let workers: std::collections::BTreeSet<&str> = jobs(&s).iter().map(|j| j["worker"].as_str().unwrap()).collect();
    assert_eq!(workers.len(), 2, "both workers took jobs: {workers:?}");
    fetch_and_compare(&farm, &id, &[(&c1, &s1), (&c2, &s2)]);
}

#[test]
fn a_killed_workers_job_is_finished_by_another_from_its_checkpoint() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let mut farm = Farm::start();
    let a = farm.add_worker("a");
    let (c, s) = (fixture("content.png"), fixture("style.png"));
    let id = farm.submit(&[&["--content", &c, "--style", &s], &RENDER[..]].concat());
    // Past the checkpoint at 10, which the worker reports before going on.
    farm.wait_for(&id, "iteration 12", |st| jobs(st)[0]["progress"]["iteration"].as_u64() >= Some(12));
    farm.kill_worker(a);
    let killed_at = Instant::now();
    farm.add_worker("b");
    let st = farm.wait_for(&id, "the job to succeed", all_succeeded);
    let job = &jobs(&st)[0];
    assert_eq!(job["attempts"], 2, "{job}");
    assert!(job["started_from"].as_u64().unwrap() >= 10, "the second attempt resumed from a checkpoint: {job}");
    assert!(job["worker"].as_str().unwrap().starts_with("b-"));
    eprintln!("failover took {:.1}s (lease {LEASE}s)", killed_at.elapsed().as_secs_f64());
    fetch_and_compare(&farm, &id, &[(&c, &s)]);
    // Succeeded, the job's checkpoints (both attempts') are removed; its
    // output and logs stay.
    let folder = farm.dir.path().join(format!("data/storage/collections/{id}/jobs/{}", job["job_id"].as_str().unwrap()));
    let files = || -> Vec<String> {
        let mut names = Vec::new();
        for attempt in std::fs::read_dir(&folder).unwrap().flatten() {
            names.extend(std::fs::read_dir(attempt.path()).unwrap().flatten().map(|f| format!("{}/{}", attempt.file_name().to_string_lossy(), f.file_name().to_string_lossy())));
        }
        names
    };
    let start = Instant::now();
    while files().iter().any(|f| f.contains("/ckpt-")) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = files();
    assert!(!left.iter().any(|f| f.contains("/ckpt-")), "checkpoints left: {left:?}");
    assert!(left.contains(&"attempt-2/output.png".to_string()) && left.contains(&"attempt-1/losses.jsonl".to_string()), "{left:?}");
}

#[test]
fn a_killed_and_restarted_coordinator_loses_no_job() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let mut farm = Farm::start();
    farm.add_worker("a");
    farm.add_worker("b");
    let (c1, c2, s) = (fixture("content.png"), fixture("init.png"), fixture("style.png"));
    let id = farm.submit(&[&["--content", &c1, "--content", &c2, "--style", &s], &RENDER[..]].concat());
    farm.wait_for(&id, "a job under way", |st| jobs(st).iter().any(|j| j["progress"]["iteration"].as_u64() >= Some(6)));
    farm.kill_coordinator();
    std::thread::sleep(Duration::from_millis(1500));
    farm.start_coordinator();
    let st = farm.wait_for(&id, "every job to succeed", all_succeeded);
    assert_eq!(jobs(&st).len(), 2);
    fetch_and_compare(&farm, &id, &[(&c1, &s), (&c2, &s)]);
}

/// Two coordinators on one PostgreSQL database and one storage: a worker
/// and farmctl given both URLs (the worker starting on the first) carry on
/// through the second when the first is SIGKILLed for good, and the jobs
/// end as if nothing happened.
#[test]
fn a_worker_given_two_coordinators_finishes_its_jobs_through_the_other_when_one_dies() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights, stylefarm_tests::Need::Postgres);
    let pg = stylefarm_coordinator::db::testing::Postgres::from_env()
        .expect("STYLEFARM_TEST_POSTGRES is not set: run scripts/test.sh, which starts a throwaway PostgreSQL");
    let database = pg.fresh_database();
    let stylefarm_coordinator::db::Target::Postgres(db) = database.target.clone() else { unreachable!() };
    let mut first = Farm::start_on(Some(database), &[]);
    let storage = first.dir.path().join("data/storage");
    let second = Farm::start_on(None, &["--database", &db, "--storage", storage.to_str().unwrap()]);
    first.add_worker_with("w", &["--coordinator", &second.url]);
    let urls = [first.url.clone(), second.url.clone()];
    let both = |args: &[&str]| Command::new(bin("farmctl")).args(["--coordinator", &urls[0], "--coordinator", &urls[1], "--wait", "30"]).args(args).output().unwrap();
    let (c1, c2, s) = (fixture("content.png"), fixture("init.png"), fixture("style.png"));
    let id = first.submit(&[&["--content", &c1, "--content", &c2, "--style", &s], &RENDER[..]].concat());
    first.wait_for(&id, "a job under way", |st| jobs(st).iter().any(|j| j["progress"]["iteration"].as_u64() >= Some(6)));
    first.kill_coordinator();
    let killed = first.url.clone();

    second.wait_for(&id, "every job to succeed", all_succeeded);
    let watch = both(&["watch", &id]);
    assert!(watch.status.success(), "watch, its first coordinator gone, exits 0 through the other: {}", String::from_utf8_lossy(&watch.stderr));
    let o = both(&["status", &id, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(all_succeeded(&st), "{st}");
    // One worker, registered once, did every job: it moved to the second
    // coordinator instead of being replaced or starting over.
    let workers: std::collections::BTreeSet<&str> = jobs(&st).iter().map(|j| j["worker"].as_str().unwrap()).collect();
    assert_eq!(workers.len(), 1, "{st}");
    for job in jobs(&st) {
        assert!(job["attempts"].as_u64() <= Some(2), "the lease carried over or was taken again once: {job}");
    }
    fetch_and_compare(&second, &id, &[(&c1, &s), (&c2, &s)]);

    // The first coordinator really is gone: alone, it answers nothing; the
    // health of both names it.
    let alone = Command::new(bin("farmctl")).args(["--coordinator", &killed, "--wait", "1", "status", &id]).output().unwrap();
    assert!(!alone.status.success(), "{}", String::from_utf8_lossy(&alone.stdout));
    let health = both(&["health"]);
    let (out, err) = (String::from_utf8_lossy(&health.stdout), String::from_utf8_lossy(&health.stderr));
    assert!(!health.status.success() && err.contains(&killed), "{out}\n{err}");
    assert!(out.contains(&format!("{} SERVING", urls[1])), "{out}\n{err}");
}

/// A second coordinator started on a data folder another one is using
/// stops at once, naming the folder's database and the process that holds
/// it; the first goes on serving. Killed, the first leaves no stale lock.
#[test]
fn a_second_coordinator_on_the_same_data_folder_is_refused_naming_the_first() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let mut farm = Farm::start();
    let data = farm.dir.path().join("data");
    let second = |data: &std::path::Path| Command::new(bin("farm-coordinator")).args(["--listen", &format!("127.0.0.1:{}", free_port()), "--data-dir"]).arg(data).output().unwrap();
    let o = second(&data);
    let said = String::from_utf8_lossy(&o.stderr);
    let pid = farm.coordinator.as_ref().unwrap().id();
    assert!(!o.status.success(), "{said}");
    assert!(said.contains(&data.join("farm.db").display().to_string()) && said.contains(&format!("pid {pid} on host")), "{said}");
    assert!(farm.farmctl(&["workers"]).status.success(), "the first still serves");

    // SIGKILLed, the first leaves nothing that stops the next start.
    farm.kill_coordinator();
    farm.start_coordinator();
    assert!(farm.farmctl(&["workers"]).status.success());
}

/// A coordinator URL that answers garbage (not HTTP/2) listed first: farmctl
/// and a worker move on to the next coordinator instead of exiting.
#[test]
fn garbage_at_the_first_coordinator_moves_farmctl_and_a_worker_to_the_next() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let garbage = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut socket in listener.incoming().flatten() {
            let _ = std::io::Write::write_all(&mut socket, b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\ngarbage");
        }
    });
    let mut farm = Farm::start();
    let o = Command::new(bin("farmctl")).args(["--coordinator", &garbage, "--coordinator", &farm.url, "--wait", "20", "workers"]).output().unwrap();
    assert!(o.status.success(), "farmctl: {}", String::from_utf8_lossy(&o.stderr));
    // The worker is given the garbage first too (add_worker's own URL last).
    farm.workers.0.push(Command::new(bin("farm-worker")).args(["--coordinator", &garbage, "--coordinator", &farm.url, "--threads", "1", "--name", "movable"]).stderr(Stdio::null()).spawn().unwrap());
    let id = farm.submit(&["--content", &fixture("content.png"), "--style", &fixture("style.png"), "--size", "16x12", "--iters", "4"]);
    farm.wait_for(&id, "the job to succeed through the second coordinator", all_succeeded);
}

/// A worker whose lease lapsed and was taken over cannot complete, heartbeat
/// or record a checkpoint: its fencing token is stale.
#[test]
fn a_stale_lease_is_refused() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let farm = Farm::start();
    let id = farm.submit(&["--content", &fixture("content.png"), "--style", &fixture("style.png"), "--size", "8x8", "--iters", "1"]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut w = pb::workers_client::WorkersClient::connect(farm.url.clone()).await.unwrap();
        let reg = |name: &str| pb::RegisterRequest { name: name.into(), device: "cpu".into(), ..Default::default() };
        let a = w.register(reg("a")).await.unwrap().into_inner().worker_id;
        let b = w.register(reg("b")).await.unwrap().into_inner().worker_id;
        let first = w.lease(pb::LeaseRequest { worker_id: a.clone(), free_memory_bytes: 0 }).await.unwrap().into_inner();
        let job = first.job.expect("a job to lease");
        // a goes silent; its lease lapses and b takes the job.
        let start = Instant::now();
        let second = loop {
            let r = w.lease(pb::LeaseRequest { worker_id: b.clone(), free_memory_bytes: 0 }).await.unwrap().into_inner();
            if r.job.is_some() {
                break r;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "the lapsed lease was never requeued");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(second.fencing_token > first.fencing_token);
        assert_eq!(second.attempt, 2);
        let complete = |worker: &str, token| pb::CompleteRequest {
            worker_id: worker.into(),
            job_id: job.job_id.clone(),
            fencing_token: token,
            output_name: "output.png".into(),
            progress: None,
        };
        let err = w.complete(complete(&a, first.fencing_token)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        let hb = pb::HeartbeatRequest {
            worker_id: a.clone(),
            job_id: job.job_id.clone(),
            fencing_token: first.fencing_token,
            checkpoint_name: "evil".into(),
            checkpoint_iteration: 99,
            ..Default::default()
        };
        assert_eq!(w.heartbeat(hb).await.unwrap_err().code(), tonic::Code::FailedPrecondition);
        // The output must exist before the job can succeed.
        let err = w.complete(complete(&b, second.fencing_token)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        let output = farm.dir.path().join("data/storage").join(&second.job.as_ref().unwrap().prefix).join("output.png");
        std::fs::create_dir_all(output.parent().unwrap()).unwrap();
        std::fs::copy(fixture("content.png"), &output).unwrap();
        w.complete(complete(&b, second.fencing_token)).await.unwrap();
        w.complete(complete(&b, second.fencing_token)).await.expect("a retried completion is answered OK");
    });
    let st = farm.status(&id).unwrap();
    assert_eq!(jobs(&st)[0]["state"], "SUCCEEDED");
    assert_eq!(jobs(&st)[0]["attempts"], 2);
}

#[test]
fn bad_submissions_are_refused_by_name_and_lose_nothing() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let farm = Farm::start();
    let good = farm.submit(&["--content", &fixture("content.png"), "--style", &fixture("style.png"), "--size", "8x8", "--iters", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.png");
    let bytes = std::fs::read(fixture("content.png")).unwrap();
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--content".into(), broken.to_string_lossy().into_owned()], "broken"),
        (vec!["--alpha".into(), "-1".into()], "alpha"),
        (vec!["--variant".into(), "beta=NaN".into()], "beta"),
        (vec!["--variant".into(), "colour=red".into()], "colour"),
        (vec!["--content".into(), "/nonexistent/*.jpg".into()], "matches no file"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["submit".to_string(), "--style".into(), fixture("style.png"), "--size".into(), "8x8".into()];
        if !extra.contains(&"--content".to_string()) {
            args.extend(["--content".into(), fixture("content.png")]);
        }
        args.extend(extra.clone());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = farm.farmctl(&refs);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && stderr.contains(needle), "{extra:?}: {stderr}");
    }
    // The accepted collection is still there, whole.
    let st = farm.status(&good).unwrap();
    assert_eq!(jobs(&st).len(), 1);
    let o = farm.farmctl(&["status", "no-such-collection"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not an id"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = farm.farmctl(&["status", "0000aaaa"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no collection or job you can see"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_sigtermed_worker_checkpoints_releases_and_another_resumes_at_once() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let mut farm = Farm::start();
    let a = farm.add_worker("a");
    let (c, s) = (fixture("content.png"), fixture("style.png"));
    // No periodic checkpoint: the only one is the one SIGTERM makes.
    let id = farm.submit(&["--content", &c, "--style", &s, "--size", "32x24", "--iters", "60", "--checkpoint-every", "1000"]);
    farm.wait_for(&id, "iteration 8", |st| jobs(st)[0]["progress"]["iteration"].as_u64() >= Some(8));
    let pid = farm.workers.0[a].id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let start = Instant::now();
    let status = loop {
        if let Some(st) = farm.workers.0[a].try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the worker did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "a pre-empted worker exits cleanly: {status}");
    // Released, not lapsed: queued again at once, with no lapse recorded.
    let st = farm.status(&id).unwrap();
    assert_eq!(jobs(&st)[0]["state"], "QUEUED", "{st}");
    assert_eq!(jobs(&st)[0]["error"], "", "a lapsed lease would say so: {st}");
    farm.add_worker("b");
    let st = farm.wait_for(&id, "the job to succeed", all_succeeded);
    let job = &jobs(&st)[0];
    assert!(job["started_from"].as_u64().unwrap() >= 8, "resumed from the SIGTERM checkpoint: {job}");
    fetch_and_compare(&farm, &id, &[(&c, &s)]);
}

#[test]
fn cancel_stops_queued_jobs_at_once_and_running_ones_at_their_next_heartbeat() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let mut farm = Farm::start();
    farm.add_worker("a");
    let (c, s) = (fixture("content.png"), fixture("style.png"));
    let long = farm.submit(&["--content", &c, "--content", &fixture("init.png"), "--style", &s, "--size", "32x24", "--iters", "100000"]);
    farm.wait_for(&long, "a running job", |st| jobs(st).iter().any(|j| j["progress"]["iteration"].as_u64() >= Some(2)));
    let o = farm.farmctl(&["cancel", &long]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = farm.status(&long).unwrap();
    assert!(jobs(&st).iter().all(|j| j["state"] == "CANCELLED"), "{st}");
    // The worker lets go of the cancelled job and takes the next collection.
    let next = farm.submit(&["--content", &c, "--style", &s, "--size", "16x12", "--iters", "3"]);
    farm.wait_for(&next, "the next collection", all_succeeded);
    let o = farm.farmctl(&["watch", &long]);
    assert!(!o.status.success(), "watch exits non-zero for a collection that did not succeed");
}

/// farmctl takes the start of an id as the page does, and says what an
/// id names when it names the wrong kind; `status ID` lists each job by
/// the start of its id with the collection's one state.
#[test]
fn farmctl_takes_the_start_of_an_id_and_status_lists_jobs_by_it() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let farm = Farm::start();
    let (c, s) = (fixture("content.png"), fixture("style.png"));
    let id = farm.submit(&["--content", &c, "--content", &fixture("init.png"), "--style", &s, "--size", "16x12", "--iters", "3"]);
    let said = |o: &std::process::Output| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let run = |args: &[&str]| {
        let o = farm.farmctl(args);
        assert!(o.status.success(), "farmctl {args:?}: {}", said(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let json = |prefix: &str| -> Value { serde_json::from_str(&run(&["status", prefix, "--json"])).unwrap() };
    let st = json(&id[..6]);
    assert_eq!((st["collection_id"].as_str(), st["state"].as_str()), (Some(id.as_str()), Some("COLLECTION_STATE_QUEUED")), "{st}");
    let job_ids: Vec<String> = jobs(&st).iter().map(|j| j["job_id"].as_str().unwrap().to_string()).collect();

    let table = run(&["status", &id[..8]]);
    assert!(table.lines().next().is_some_and(|l| l.contains("2 jobs, queued")), "{table}");
    for j in &job_ids {
        assert!(table.lines().any(|l| l.starts_with(&j[..8]) && l.contains("queued")), "job {j} by its start: {table}");
    }

    // A job's start names the job: cancel infers it, retry takes it.
    let out = run(&["cancel", &job_ids[0][..8]]);
    assert!(out.contains(&format!("job {} is cancelled", job_ids[0])), "{out}");
    let st = json(&id[..8]);
    assert_eq!((jobs(&st)[0]["state"].as_str(), st["state"].as_str()), (Some("CANCELLED"), Some("COLLECTION_STATE_QUEUED")), "{st}");
    run(&["cancel", &id[..8]]);
    assert_eq!(json(&id[..8])["state"], "COLLECTION_STATE_CANCELLED");
    let out = run(&["retry", &job_ids[1][..8]]);
    assert!(out.contains(&job_ids[1]) && out.contains("queued"), "{out}");
    let listed = run(&["status"]);
    assert!(listed.lines().any(|l| l.contains(&id) && l.contains("queued")), "the farm's list gives each collection's state: {listed}");

    // The wrong kind, too short, unknown: refused by name, at once.
    for (args, says) in [
        (vec!["watch", &job_ids[0][..8]], "is a job's id"),
        (vec!["cancel", "--job", &id[..8]], "is a collection's id"),
        (vec!["logs", &id[..8]], "is a collection's id"),
        (vec!["status", "abc"], "4 to 36"),
        (vec!["status", "ffffffff-ffff"], "no collection or job you can see"),
    ] {
        let o = farm.farmctl(&args);
        assert!(!o.status.success() && said(&o).contains(says), "farmctl {args:?}: {}", said(&o));
    }
}

/// What an autoscaler reads: `/metrics` counts the queued jobs a device of
/// each memory size could take (`stylefarm_queued_jobs_fitting`), from
/// what the queue holds.
#[test]
fn the_queue_is_counted_by_the_device_memory_its_jobs_need() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let coord_metrics = format!("127.0.0.1:{}", free_port());
    let farm = Farm::start_with(&["--metrics-listen", &coord_metrics]);
    // No worker: everything stays queued.
    let (c1, c2, s) = (fixture("content.png"), fixture("init.png"), fixture("style.png"));
    farm.submit(&["--content", &c1, "--content", &c2, "--style", &s, "--size", "32x24"]);
    farm.submit(&["--content", &c1, "--style", &s, "--size", "3840x2160"]);
    let gauge = |m: &str, gib: u64| -> Option<u64> {
        let line = format!("stylefarm_queued_jobs_fitting{{memory_gib=\"{gib}\"}} ");
        m.lines().find_map(|l| l.strip_prefix(&line)).and_then(|v| v.trim().parse().ok())
    };
    let start = std::time::Instant::now();
    let m = loop {
        let m = scrape_metrics(&coord_metrics);
        if gauge(&m, 141) == Some(3) || start.elapsed() > Duration::from_secs(10) {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let sizes = [1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 80, 96, 141];
    let counts: Vec<u64> = sizes.iter().map(|&g| gauge(&m, g).unwrap_or_else(|| panic!("no line for {g} GiB: {m}"))).collect();
    assert_eq!((counts[0], counts[sizes.len() - 1]), (2, 3), "the two small jobs fit 1 GiB, all three fit the largest: {counts:?}");
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "a larger device takes what a smaller one does: {counts:?}");
    assert!(counts.contains(&2) && counts[1..].iter().any(|&n| n == 3), "the 4K job needs more than 1 GiB: {counts:?}");
    assert!(m.contains("stylefarm_queue_length 3"), "{m}");
}

#[test]
fn metrics_and_json_logs_describe_the_work() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let coord_metrics = format!("127.0.0.1:{}", free_port());
    let mut farm = Farm::start_with(&["--metrics-listen", &coord_metrics, "--log-format", "json"]);
    let worker_metrics = format!("127.0.0.1:{}", free_port());
    let log = farm.dir.path().join("worker.log");
    let w = Command::new(bin("farm-worker"))
        .args(["--coordinator", &farm.url, "--threads", "1", "--name", "obs", "--log-format", "json", "--metrics-listen", &worker_metrics])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    farm.workers.0.push(w);
    let id = farm.submit(&["--content", &fixture("content.png"), "--style", &fixture("style.png"), "--size", "16x12", "--iters", "6", "--checkpoint-every", "2"]);
    let st = farm.wait_for(&id, "the job to succeed", all_succeeded);
    let job_id = jobs(&st)[0]["job_id"].as_str().unwrap().to_string();
    // The job gauges are refreshed every 2 s.
    let start = std::time::Instant::now();
    let m = loop {
        let m = scrape_metrics(&coord_metrics);
        if m.contains("stylefarm_jobs{state=\"succeeded\"} 1") || start.elapsed() > Duration::from_secs(5) {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(m.contains("stylefarm_jobs{state=\"succeeded\"} 1"), "{m}");
    assert!(m.contains("stylefarm_queue_length 0") && m.contains("stylefarm_leases_total 1") && m.contains("stylefarm_jobs_completed_total 1"), "{m}");
    let m = scrape_metrics(&worker_metrics);
    assert!(m.contains("stylefarm_iterations_total{device=\"cpu\"} 6"), "{m}");
    assert!(m.contains("stylefarm_checkpoint_bytes_count 2") && m.contains("stylefarm_render_seconds_count{device=\"cpu\"} 1"), "{m}");
    assert!(m.contains("stylefarm_iterations_per_second{device=\"cpu\"}"), "{m}");

    // Every worker log line is JSON; the attempt's lines carry its span.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let completed = lines.iter().find(|l| l["fields"]["message"] == "completed").unwrap_or_else(|| panic!("no completion line in {text}"));
    assert_eq!(completed["span"]["name"], "attempt", "{completed}");
    assert_eq!(completed["span"]["job"], job_id.as_str(), "{completed}");
}

/// An S3-compatible server on loopback (moto, from PyPI; `scripts/test.sh`
/// installs it), killed when dropped.
struct S3 {
    child: Child,
    endpoint: String,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTP/1.1 request; returns the status line and body.
fn http(addr: &str, method: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn s3_server(bucket: &str) -> S3 {
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server (pip install 'moto[server]') must be on PATH for the S3 test");
    let addr = format!("127.0.0.1:{port}");
    let start = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(http(&addr, "PUT", &format!("/{bucket}")).starts_with("HTTP/1.1 200"), "bucket creation failed");
    S3 { child, endpoint: format!("http://{addr}") }
}

#[test]
fn a_farm_on_s3_storage_checkpoints_resumes_and_outputs_there() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights, stylefarm_tests::Need::S3);
    let s3 = s3_server("stylefarm");
    // object_store reads its S3 settings from the environment, which the
    // farm's processes inherit.
    for (k, v) in [("AWS_ENDPOINT", s3.endpoint.as_str()), ("AWS_ALLOW_HTTP", "true"), ("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")] {
        std::env::set_var(k, v);
    }
    let mut farm = Farm::start_with(&["--storage", "s3://stylefarm/farm"]);
    let a = farm.add_worker("a");
    let (c, s) = (fixture("content.png"), fixture("style.png"));
    let id = farm.submit(&[&["--content", &c, "--style", &s], &RENDER[..]].concat());
    farm.wait_for(&id, "iteration 12", |st| jobs(st)[0]["progress"]["iteration"].as_u64() >= Some(12));
    farm.kill_worker(a);
    farm.add_worker("b");
    let st = farm.wait_for(&id, "the job to succeed", all_succeeded);
    assert!(jobs(&st)[0]["started_from"].as_u64().unwrap() >= 10, "resumed from the S3 checkpoint: {st}");
    // The checkpoint it resumed from was in S3; succeeded, the job's
    // checkpoints are removed there, its output and log stay.
    let list = || http(s3.endpoint.trim_start_matches("http://"), "GET", "/stylefarm?list-type=2&prefix=farm/collections/");
    let start = Instant::now();
    while list().contains("ckpt-") && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let listing = list();
    assert!(!listing.contains("ckpt-") && listing.contains("output.png") && listing.contains("losses.jsonl"), "{listing}");
    fetch_and_compare(&farm, &id, &[(&c, &s)]);
}

/// Every render flag a farm job takes (coarse-to-fine, blended styles,
/// layers, TV, L-BFGS, snapshots, colour preservation, 16-bit output), rendered by the farm and by
/// `farmctl render` alike: the images and the loss values agree to the bit,
/// and the job's storage holds what a local render leaves beside its image.
#[test]
fn a_coarse_to_fine_blended_job_matches_the_local_render_and_leaves_its_artefacts() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let mut farm = Farm::start();
    farm.add_worker("a");
    let (c, s1, s2) = (fixture("content.png"), fixture("style.png"), fixture("init.png"));
    let flags = [
        "--size", "32x24", "--iters", "24", "--optimizer", "lbfgs", "--scales", "0.5", "--coarse-iters", "8",
        "--style-blend", "0.7,0.3", "--tv-weight", "0.01", "--style-layers", "conv1_1:1,conv2_1:2,conv3_1:1",
        "--content-layers", "conv3_2", "--seed", "3", "--preserve-colors", "luminance", "--bit-depth", "16",
    ];
    let id = farm.submit(&[&["--content", &c, "--style", &s1, "--style", &s2, "--snapshot-every", "10", "--checkpoint-every", "5"], &flags[..]].concat());
    let o = farm.farmctl(&["watch", &id]);
    assert!(o.status.success(), "watch: {}", String::from_utf8_lossy(&o.stderr));
    let st = farm.status(&id).unwrap();
    assert_eq!(jobs(&st).len(), 1, "blended styles make one job per content: {st}");
    let job = &jobs(&st)[0];
    assert_eq!(job["style_name"], "style+init", "the styles in the order given, as the blend weights are: {job}");

    // The same render on this machine.
    let local = farm.dir.path().join("local.png");
    let log = farm.dir.path().join("local.jsonl");
    let o = Command::new(bin("farmctl"))
        .args(["render", "-q", "--content", &c, "--style", &s1, "--style", &s2, "--snapshot-every", "10"])
        .args(flags)
        .arg("--log")
        .arg(&log)
        .arg("-o")
        .arg(&local)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The attempt's folder, where its worker wrote everything.
    let output = farm.dir.path().join("data/storage").join(job["output_key"].as_str().unwrap());
    let job_dir = output.parent().unwrap().to_path_buf();
    assert!(job_dir.ends_with("attempt-1"), "{}", job_dir.display());
    let farmed = std::fs::read(job_dir.join("output.png")).unwrap();
    assert!(farmed == std::fs::read(&local).unwrap(), "the farm's image differs from the local render's");
    let decoded = image::load_from_memory(&farmed).unwrap();
    assert_eq!(decoded.color(), image::ColorType::Rgb16, "--bit-depth 16 writes a 16-bit PNG");
    let losses = |text: &str| -> Vec<(u64, f64, f64, f64, f64)> {
        text.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (v["iteration"].as_u64().unwrap(), v["content"].as_f64().unwrap(), v["style"].as_f64().unwrap(), v["tv"].as_f64().unwrap(), v["total"].as_f64().unwrap())
            })
            .collect()
    };
    let farm_log = std::fs::read_to_string(job_dir.join("losses.jsonl")).unwrap();
    assert_eq!(losses(&farm_log).len(), 25, "24 iterations and the final image");
    assert_eq!(losses(&farm_log), losses(&std::fs::read_to_string(&log).unwrap()), "loss logs differ");

    // What a local render leaves beside its image, the job leaves in storage.
    for name in ["losses.svg", "graph.dot", "snapshot_0010.png", "snapshot_0020.png"] {
        assert!(job_dir.join(name).is_file(), "{name} missing in {}", job_dir.display());
    }
    let dot = std::fs::read_to_string(job_dir.join("graph.dot")).unwrap();
    assert_eq!(dot, std::fs::read_to_string(farm.dir.path().join("local.dot")).unwrap(), "the graphs differ");
    let events: Vec<_> = std::fs::read_dir(job_dir.join("tb")).unwrap().flatten().collect();
    assert_eq!(events.len(), 1);
    assert!(events[0].file_name().to_string_lossy().starts_with("events.out.tfevents."));
    assert!(events[0].metadata().unwrap().len() > 25 * 40, "25 records of four scalars");
}

/// What the worker logged during each attempt is kept beside the
/// attempt's files and read with `farmctl logs`; a failed attempt's log
/// says why, naming the parameter to change.
#[test]
fn each_attempt_keeps_its_log() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let mut farm = Farm::start();
    farm.add_worker("logger");
    let (c, s) = (fixture("content.png"), fixture("style.png"));
    let ok = farm.submit(&["--content", &c, "--style", &s, "--size", "16x12", "--iters", "6", "--checkpoint-every", "2"]);
    let st = farm.wait_for(&ok, "the job to succeed", all_succeeded);
    let job = jobs(&st)[0]["job_id"].as_str().unwrap().to_string();
    let o = farm.farmctl(&["logs", &job]);
    let log = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(log.contains(" INFO completed"), "{log}");
    let stored = std::fs::read_dir(farm.dir.path().join("data/storage/collections").join(&ok).join("jobs").join(&job).join("attempt-1")).unwrap();
    assert!(stored.flatten().any(|e| e.file_name() == "worker.log"), "worker.log sits in the attempt's folder");
    let o = farm.farmctl(&["logs", &job, "--attempt", "2"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("attempts 1 to 1"), "{}", String::from_utf8_lossy(&o.stderr));

    let bad = farm.submit(&["--content", &c, "--style", &s, "--size", "16x12", "--iters", "3", "--beta", "1e300"]);
    let st = farm.wait_for(&bad, "the job to fail", |s| jobs(s)[0]["state"] == "FAILED");
    let error = jobs(&st)[0]["error"].as_str().unwrap().to_string();
    assert!(error.contains("try a smaller beta"), "{error}");
    let o = farm.farmctl(&["logs", jobs(&st)[0]["job_id"].as_str().unwrap()]);
    let log = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(log.contains(" WARN failed: ") && log.contains("try a smaller beta"), "{log}");
}

/// An attempt's log is its owner's to read: the farm's paths in it are
/// redacted as in failure messages (a worker that could not read an input
/// logged the storage's absolute path).
#[test]
fn an_attempts_log_shows_no_path_of_the_farm() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let mut farm = Farm::start();
    let (c, s) = (fixture("content.png"), fixture("style.png"));
    let id = farm.submit(&["--content", &c, "--style", &s, "--size", "16x12", "--iters", "3"]);
    // The inputs go missing before any worker reads them.
    let storage = farm.dir.path().join("data/storage");
    std::fs::remove_dir_all(storage.join("inputs")).unwrap();
    farm.add_worker("reader");
    // (Not the job's fault: it is requeued, and its first attempt's log
    // says why it ended.)
    let st = farm.wait_for(&id, "a first attempt", |s| jobs(s)[0]["attempts"].as_u64() >= Some(1));
    let job = jobs(&st)[0]["job_id"].as_str().unwrap().to_string();
    let start = Instant::now();
    let log = loop {
        let o = farm.farmctl(&["logs", &job, "--attempt", "1"]);
        let log = String::from_utf8_lossy(&o.stdout).to_string();
        if o.status.success() && log.contains(" WARN failed: ") {
            break log;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no log of the failed attempt: {log}{}", String::from_utf8_lossy(&o.stderr));
        std::thread::sleep(Duration::from_millis(200));
    };
    let data = farm.dir.path().to_string_lossy().into_owned();
    assert!(!log.contains(&data) && log.contains("<storage>"), "the farm's paths are redacted: {log}");
}

/// Pausing a collection takes its running job back at a checkpoint, at no
/// cost to the job (no failure, no requeue charged); it waits while the
/// collection is paused and, resumed, finishes from that checkpoint on
/// another attempt, to an image equal to an uninterrupted render's to the
/// bit.
#[test]
fn a_paused_collections_running_job_is_given_back_at_a_checkpoint_and_resumes_to_the_same_image() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let mut farm = Farm::start();
    farm.add_worker("w");
    let (c, s) = (fixture("content.png"), fixture("style.png"));
    let render = ["--size", "48x36", "--iters", "400"];
    let id = farm.submit(&[&["--content", &c, "--style", &s, "--checkpoint-every", "10"], &render[..]].concat());
    farm.wait_for(&id, "the job past a checkpoint", |st| jobs(st)[0]["state"] == "RUNNING" && jobs(st)[0]["progress"]["iteration"].as_u64() >= Some(20));
    let paused_at = Instant::now();
    assert!(farm.farmctl(&["pause", &id]).status.success());
    let back = farm.wait_for(&id, "the job given back", |st| jobs(st)[0]["state"] == "QUEUED");
    let given_back = paused_at.elapsed();
    let job = jobs(&back)[0].clone();
    assert_eq!((job["attempts"].as_u64(), job["failures"].as_u64(), job["requeues"].as_u64()), (Some(1), Some(0), Some(0)), "a release costs nothing: {job}");
    assert!(job["progress"]["iteration"].as_u64() < Some(400), "given back before it finished: {job}");
    std::thread::sleep(Duration::from_secs(2));
    let still = farm.status(&id).unwrap();
    assert_eq!((jobs(&still)[0]["state"].as_str(), jobs(&still)[0]["attempts"].as_u64()), (Some("QUEUED"), Some(1)), "nothing starts while paused");

    assert!(farm.farmctl(&["resume", &id]).status.success());
    let done = farm.wait_for(&id, "the job to finish after the resume", all_succeeded);
    let job = &jobs(&done)[0];
    assert_eq!(job["attempts"].as_u64(), Some(2), "{job}");
    assert!(job["started_from"].as_u64() >= Some(10), "the second attempt resumed from the checkpoint: {job}");
    eprintln!("paused at iteration ≥ 20: given back in {given_back:?}; resumed from iteration {}", job["started_from"]);
    // Equal to an uninterrupted render of the same job, to the bit.
    fetch_and_compare_with(&farm, &id, &[(&c, &s)], &render);
}

/// A rush job preempts: a collection at a higher priority, submitted while
/// the farm's only worker renders a long job, gets the worker at that
/// job's next iteration. The long job is given back at a checkpoint at no
/// cost (no failure, no requeue charged; its attempt's log and outcome say
/// why) and finishes later, on a second attempt, to an image equal to an
/// uninterrupted render's to the bit.
#[test]
fn a_higher_priority_submit_preempts_a_running_job_which_resumes_to_the_same_image() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let mut farm = Farm::start();
    farm.add_worker("w");
    let (c, s, other) = (fixture("content.png"), fixture("style.png"), fixture("init.png"));
    let render = ["--size", "48x36", "--iters", "400"];
    let long = farm.submit(&[&["--content", &c, "--style", &s, "--checkpoint-every", "10"], &render[..]].concat());
    farm.wait_for(&long, "the long job past a checkpoint", |st| jobs(st)[0]["state"] == "RUNNING" && jobs(st)[0]["progress"]["iteration"].as_u64() >= Some(20));
    let submitted = Instant::now();
    let rush = farm.submit(&["--content", &other, "--style", &s, "--size", "16x12", "--iters", "3", "--priority", "10"]);
    farm.wait_for(&rush, "the rush job to start", |st| jobs(st)[0]["state"] != "QUEUED");
    let started = submitted.elapsed();
    let back = farm.status(&long).unwrap();
    let job = jobs(&back)[0].clone();
    assert!(job["state"] == "QUEUED" && job["progress"]["iteration"].as_u64() < Some(400), "the long job was given back before it finished: {job}");
    assert_eq!((job["attempts"].as_u64(), job["failures"].as_u64(), job["requeues"].as_u64()), (Some(1), Some(0), Some(0)), "preemption costs nothing: {job}");
    let rushed = farm.wait_for(&rush, "the rush job to finish", all_succeeded);
    // Both attempts' logs tell of it: the rush job's says what its worker
    // was freed from.
    let log = farm.farmctl(&["logs", jobs(&rushed)[0]["job_id"].as_str().unwrap()]);
    let log = String::from_utf8_lossy(&log.stdout);
    let long_job = jobs(&back)[0]["job_id"].as_str().unwrap().to_string();
    assert!(log.contains("freed for this job by a preemption") && log.contains(&long_job), "{log}");
    let done = farm.wait_for(&long, "the long job to finish on its second attempt", all_succeeded);
    let job = &jobs(&done)[0];
    assert_eq!(job["attempts"].as_u64(), Some(2), "{job}");
    assert!(job["started_from"].as_u64() >= Some(20), "the second attempt resumed where the first was preempted: {job}");
    eprintln!("rush job running {started:?} after its submit; the long job resumed from iteration {}", job["started_from"]);
    let log = farm.farmctl(&["logs", job["job_id"].as_str().unwrap(), "--attempt", "1"]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains("asked for the job back") && log.contains("preempted: a queued job of the same user at priority 10 outranks this one's 0"), "{log}");
    fetch_and_compare_with(&farm, &long, &[(&c, &s)], &render);
}
