//! One slow thing never blocks the rest: a gigabyte downloaded from the
//! dashboard streams through the coordinator without being held (another
//! client's reads stay fast, its memory flat), and a worker whose network
//! goes silent notices within its heartbeat's patience, renders on, and
//! talks again when the network does — the job ends once.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stylefarm_proto as pb;
use stylefarm_tests::{bin, channel, fixture, free_port, jobs, rss_mib, small_submit, Farm, Procs};


#[test]
fn a_gigabyte_download_streams_while_others_are_answered() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let farm = Farm::start_with(&["--http-listen", "127.0.0.1:0"]);
    let pid = farm.coordinator.as_ref().unwrap().id();
    let dashboard = farm.dashboard.clone().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let ch = channel(&farm.url).await;
        let mut f = pb::farm_client::FarmClient::new(ch.clone());
        let collection = f.submit(small_submit(1, 5)).await.unwrap().into_inner().collection_id;
        let mut w = pb::workers_client::WorkersClient::new(ch.clone());
        let worker = w.register(pb::RegisterRequest { name: "w".into(), device: "cpu".into(), ..Default::default() }).await.unwrap().into_inner().worker_id;
        let job = w.lease(pb::LeaseRequest { worker_id: worker, free_memory_bytes: 0 }).await.unwrap().into_inner().job.unwrap();
        // A 1 GiB file in the attempt's folder (sparse: quick to make).
        let folder = farm.dir.path().join("data/storage").join(&job.prefix);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::File::create(folder.join("big.bin")).unwrap().set_len(1 << 30).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let witness = {
            let (mut f, stop, latencies, id) = (f.clone(), stop.clone(), latencies.clone(), collection.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let start = Instant::now();
                    f.get_collection(pb::CollectionRef { collection_id: id.clone() }).await.unwrap();
                    latencies.lock().unwrap().push(start.elapsed());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let peak = Arc::new(Mutex::new(0u64));
        let sampler = {
            let (stop, peak) = (stop.clone(), peak.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let now = rss_mib(pid);
                    {
                        let mut p = peak.lock().unwrap();
                        *p = (*p).max(now);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let before = rss_mib(pid);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut download = reqwest::get(format!("{dashboard}api/jobs/{}/files/big.bin?download=true", job.job_id)).await.unwrap();
        assert_eq!(download.status(), 200);
        assert_eq!(download.content_length(), Some(1 << 30));
        let mut got = 0u64;
        while let Some(chunk) = download.chunk().await.unwrap() {
            got += chunk.len() as u64;
        }
        assert_eq!(got, 1 << 30);
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        witness.await.unwrap();
        sampler.await.unwrap();
        let mut l = latencies.lock().unwrap().clone();
        l.sort();
        let p99 = l[(l.len() * 99 / 100).min(l.len() - 1)];
        let grown = peak.lock().unwrap().saturating_sub(before);
        println!("1 GiB download: {} witness reads, p99 {p99:?}; the coordinator grew {grown} MiB at its peak", l.len());
        assert!(p99 < Duration::from_millis(50), "another client's GetCollection p99 was {p99:?} during the download");
        assert!(grown < 64, "the coordinator grew {grown} MiB serving a 1 GiB download");
    });
}

/// Forwards TCP between clients and `to`, byte for byte, except while
/// `paused`: then it holds what it read, and forwards nothing either way.
fn proxy(to: u16, paused: Arc<AtomicBool>) -> u16 {
    forwarding(to, move |_| paused.load(Ordering::SeqCst)).0
}

/// Forwards TCP between clients and `to`; a connection (numbered from 1 in
/// the order accepted) forwards nothing while `hold(its number)` is true.
/// Returns the port and how many connections it has accepted.
fn forwarding(to: u16, hold: impl Fn(u64) -> bool + Send + Sync + 'static) -> (u16, Arc<std::sync::atomic::AtomicU64>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (hold, accepted) = (Arc::new(hold), Arc::new(std::sync::atomic::AtomicU64::new(0)));
    let counted = accepted.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let number = counted.fetch_add(1, Ordering::SeqCst) + 1;
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else { continue };
            for (mut from, mut into) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                let hold = hold.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = [0u8; 16 << 10];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        while hold(number) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        if into.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (port, accepted)
}

#[test]
fn a_worker_behind_a_silent_network_renders_on_and_finishes_once() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut procs = Procs(Vec::new());
    let mut coordinator = Command::new(bin("farm-coordinator"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--lease-seconds", "60", "--heartbeat-seconds", "1", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(coordinator.stdout.take().unwrap()).read_line(&mut line).unwrap();
    procs.0.push(coordinator);
    let paused = Arc::new(AtomicBool::new(false));
    let through = proxy(port, paused.clone());
    let log = dir.path().join("worker.log");
    procs.0.push(
        Command::new(bin("farm-worker"))
            .args(["--coordinator", &format!("http://127.0.0.1:{through}"), "--device", "cpu", "--threads", "1", "--name", "behind-proxy"])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // Watched directly, not through the proxy.
    let farm = Farm { dir, port, url: format!("http://127.0.0.1:{port}"), coordinator: None, workers: procs, extra: Vec::new(), dashboard: None, database: None };
    let id = farm.submit(&["--content", &fixture("content.png"), "--style", &fixture("style.png"), "--size", "64x48", "--iters", "400", "--checkpoint-every", "50"]);
    let iteration = |s: &serde_json::Value| jobs(s)[0]["progress"]["iteration"].as_u64().unwrap_or(0);
    let before = iteration(&farm.wait_for(&id, "the render to start", |s| iteration(s) >= 3));
    paused.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(6));
    let noticed = std::fs::read_to_string(&log).unwrap();
    paused.store(false, Ordering::SeqCst);
    assert!(noticed.contains("heartbeat got no answer"), "the worker did not notice the silence:\n{noticed}");
    // Once the network speaks again, the heartbeats report how far the
    // render went meanwhile, and it finishes in its first attempt.
    let after = iteration(&farm.wait_for(&id, "heartbeats again", |s| iteration(s) > before + 10 || jobs(s)[0]["state"] == "SUCCEEDED"));
    let st = farm.wait_for(&id, "the job to succeed", |s| jobs(s)[0]["state"] == "SUCCEEDED");
    assert_eq!(jobs(&st)[0]["attempts"], 1, "{st}");
    println!("iteration {before} when the network went silent, {after} when it spoke again");
}

/// Forwards TCP to `to` like [`proxy`]; calling the returned freeze
/// silences the connections open at that moment for good (they stay open
/// and forward nothing, as a NAT that dropped them would), while new ones
/// pass.
fn freezing_proxy(to: u16) -> (u16, impl Fn()) {
    use std::sync::atomic::AtomicU64;
    let frozen_below = Arc::new(AtomicU64::new(0));
    let below = frozen_below.clone();
    let (port, accepted) = forwarding(to, move |number| number <= below.load(Ordering::SeqCst));
    (port, move || frozen_below.store(accepted.load(Ordering::SeqCst), Ordering::SeqCst))
}

/// Two coordinators on one PostgreSQL; B's change feed (its LISTEN
/// connection) dies silently — no reset, nothing more arrives. A Watch on B
/// of a collection whose end is written through A still ends: B's listener
/// hears no ping within its patience, connects again and its watchers
/// resynchronise. (Before, B's Watch waited for ever while GetCollection
/// said the collection had ended.)
#[test]
fn a_watch_outlives_a_change_feed_that_died_silently() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Postgres);
    let (database, url) = stylefarm_tests::postgres_database();
    let port_of = |u: &str| u.rsplit_once(':').and_then(|(_, rest)| rest.split('/').next()).and_then(|p| p.parse::<u16>().ok()).unwrap();
    let pg_port = port_of(&url);
    let (through, freeze) = freezing_proxy(pg_port);
    let listener_url = url.replacen(&format!(":{pg_port}/"), &format!(":{through}/"), 1);

    let a = stylefarm_tests::Farm::start_on(Some(database), &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Procs(Vec::new());
    let b_url = a.second_coordinator(&url, dir.path(), &[], &[("STYLEFARM_TEST_LISTENER_DATABASE", &listener_url)], &mut procs);

    // No worker: the job waits until it is cancelled through A.
    let id = a.submit(&["--content", &fixture("content.png"), "--style", &fixture("style.png"), "--size", "8x8"]);
    let mut watch = Command::new(bin("farmctl")).args(["--coordinator", &b_url, "watch", &id]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    freeze();
    std::thread::sleep(Duration::from_secs(1));
    assert!(a.farmctl(&["cancel", &id]).status.success());
    let start = Instant::now();
    let ended = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = watch.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(ended.is_some(), "the watch on B never heard that the collection ended");
    eprintln!("B's watch ended {:.1} s after the cancel", start.elapsed().as_secs_f64());
}

/// Two coordinators on one PostgreSQL, B's clock 8 s ahead of A's (the
/// lease is 3 s). A worker leases and heartbeats through A while B sweeps:
/// B tells time by the database's clock, so it expires nothing that is
/// alive. (Before, B took A's leases for lapsed at once and requeued the
/// job under its worker, whose heartbeats were then refused.)
#[test]
fn a_coordinator_whose_clock_is_off_expires_no_live_lease() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Postgres);
    let (database, url) = stylefarm_tests::postgres_database();
    let a = Farm::start_on(Some(database), &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Procs(Vec::new());
    let b_url = a.second_coordinator(&url, dir.path(), &[], &[("STYLEFARM_TEST_CLOCK_SKEW_SECONDS", "8")], &mut procs);
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let mut farm = pb::farm_client::FarmClient::new(channel(&a.url).await);
        let mut b_farm = pb::farm_client::FarmClient::new(channel(&b_url).await);
        let mut w = pb::workers_client::WorkersClient::new(channel(&a.url).await);
        farm.submit(small_submit(1, 100)).await.unwrap();
        let me = w.register(pb::RegisterRequest { name: "w".into(), device: "cpu".into(), ..Default::default() }).await.unwrap().into_inner().worker_id;
        let lease = w.lease(pb::LeaseRequest { worker_id: me.clone(), free_memory_bytes: 0 }).await.unwrap().into_inner();
        let job = lease.job.expect("the queued job is leased").job_id;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(8) {
            let beat = pb::HeartbeatRequest { worker_id: me.clone(), job_id: job.clone(), fencing_token: lease.fencing_token, ..Default::default() };
            let answer = w.heartbeat(beat).await;
            assert!(answer.is_ok(), "a heartbeat {:.1} s into the lease was refused: {answer:?}", start.elapsed().as_secs_f64());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let seen = b_farm.get_job(pb::JobRef { job_id: job.clone() }).await.unwrap().into_inner().job.unwrap();
        assert_eq!((seen.state, seen.attempts, seen.requeues), (pb::JobState::Running as i32, 1, 0), "{seen:?}");
    });
}
