//! The coordinator under load, as processes: group commit keeps every
//! acknowledged write across a SIGKILL, Watch streams are limited and a
//! watcher that does not read costs bounded memory, and `farmctl loadtest`
//! finishes a collection exactly once through a restart. (Speed lives in
//! `farmctl loadtest`'s figures in BENCHMARKS.md, not here.)

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stylefarm_proto as pb;
use stylefarm_tests::{bin, channel, free_port, rss_bytes, scrape_metrics, small_submit, with_token, Farm, Raw};
use tonic::{Code, Request};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}



fn small_collection(contents: usize) -> pb::SubmitRequest {
    small_submit(contents, 1)
}

#[test]
fn every_acknowledged_write_survives_a_sigkill_mid_group() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let mut farm = Farm::start();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let runtime = rt();
    runtime.block_on(async {
        // 32 clients register as fast as they can; the coordinator is
        // SIGKILLed while their calls are in flight.
        let mut tasks = Vec::new();
        for i in 0..32 {
            let (url, acked) = (farm.url.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                let mut w = pb::workers_client::WorkersClient::new(channel(&url).await);
                // Each registration its own name: a name whose worker is
                // alive is refused (ALREADY_EXISTS), and every write here
                // must be one that is acknowledged.
                for n in 0.. {
                    let r = pb::RegisterRequest { name: format!("w{i}-{n}"), device: "cpu".into(), ..Default::default() };
                    match w.register(r).await {
                        Ok(r) => acked.lock().unwrap().push(r.into_inner().worker_id),
                        Err(_) => return,
                    }
                }
            }));
        }
        let start = Instant::now();
        while acked.lock().unwrap().len() < 500 {
            assert!(start.elapsed() < Duration::from_secs(60), "registrations too slow");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        farm.kill_coordinator();
        for t in tasks {
            t.await.unwrap();
        }
    });
    farm.start_coordinator();
    let listed: std::collections::HashSet<String> = runtime.block_on(async {
        let mut f = pb::farm_client::FarmClient::new(channel(&farm.url).await);
        let (mut ids, mut page_token) = (std::collections::HashSet::new(), String::new());
        loop {
            let page = f
                .list_workers(pb::ListWorkersRequest {
                    page_size: 0,
                    page_token,
                    // Each client registers under one name again and
                    // again: all but its last row are replaced, and kept.
                    include_gone: true,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(
                page.workers.len() <= 500,
                "a page holds at most 500 workers"
            );
            ids.extend(page.workers.into_iter().map(|w| w.worker_id));
            if page.next_page_token.is_empty() {
                break ids;
            }
            page_token = page.next_page_token;
        }
    });
    let acked = acked.lock().unwrap().clone();
    let lost: Vec<&String> = acked.iter().filter(|id| !listed.contains(*id)).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged registrations lost: {:?}", lost.len(), acked.len(), &lost[..lost.len().min(5)]);
}


#[test]
fn watches_are_limited_per_client_and_in_all() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let farm = Farm::start_with(&["--user-token", "u1", "--user-token", "u2", "--worker-token", "w", "--max-watchers-per-client", "2", "--max-watchers", "3"]);
    rt().block_on(async {
        let ch = channel(&farm.url).await;
        let mut u1 = pb::farm_client::FarmClient::with_interceptor(ch.clone(), with_token("u1"));
        let mut u2 = pb::farm_client::FarmClient::with_interceptor(ch.clone(), with_token("u2"));
        let a = u1.submit(small_collection(1)).await.unwrap().into_inner().collection_id;
        let b = u2.submit(small_collection(1)).await.unwrap().into_inner().collection_id;
        let watch = |c: &mut pb::farm_client::FarmClient<_>, id: &str| {
            let r = pb::CollectionRef { collection_id: id.into() };
            let mut c = c.clone();
            async move { c.watch(r).await }
        };
        let first = watch(&mut u1, &a).await.unwrap();
        let second = watch(&mut u1, &a).await.unwrap();
        let e = watch(&mut u1, &a).await.unwrap_err();
        assert!(e.code() == Code::ResourceExhausted && e.message().contains("--max-watchers-per-client 2"), "{e:?}");
        let third = watch(&mut u2, &b).await.unwrap();
        let e = watch(&mut u2, &b).await.unwrap_err();
        assert!(e.code() == Code::ResourceExhausted && e.message().contains("--max-watchers 3"), "{e:?}");
        // A closed watch frees its place.
        drop(first);
        let start = Instant::now();
        loop {
            match watch(&mut u2, &b).await {
                Ok(_) => break,
                Err(e) => assert!(start.elapsed() < Duration::from_secs(10), "the place was never freed: {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop((second, third));
    });
}

#[test]
fn a_watcher_that_does_not_read_costs_bounded_memory_and_gets_merged_changes() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let farm = Farm::start();
    let pid = farm.coordinator.as_ref().unwrap().id();
    rt().block_on(async {
        let ch = channel(&farm.url).await;
        let mut f = pb::farm_client::FarmClient::new(ch.clone());
        let id = f.submit(small_collection(2)).await.unwrap().into_inner().collection_id;
        let mut lazy = f.watch(pb::CollectionRef { collection_id: id.clone() }).await.unwrap().into_inner();
        let mut w = pb::workers_client::WorkersClient::new(ch.clone());
        let worker = w.register(pb::RegisterRequest { name: "w".into(), device: "cpu".into(), ..Default::default() }).await.unwrap().into_inner().worker_id;
        let lease = w.lease(pb::LeaseRequest { worker_id: worker.clone(), free_memory_bytes: 0 }).await.unwrap().into_inner();
        let job = lease.job.unwrap().job_id;
        let before = rss_bytes(pid);
        // Far more changes than the event stream holds (8192), while the
        // watcher reads nothing.
        let mut tasks = Vec::new();
        for t in 0..16u32 {
            let (mut w, worker, job) = (w.clone(), worker.clone(), job.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..700u32 {
                    // Each heartbeat a different (valid) loss: a change to announce.
                    let progress = pb::Progress { iteration: 1, iterations: 1, total: (t * 1000 + i) as f64, ..Default::default() };
                    let r = pb::HeartbeatRequest { worker_id: worker.clone(), job_id: job.clone(), fencing_token: lease.fencing_token, progress: Some(progress), ..Default::default() };
                    w.heartbeat(r).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let grown = rss_bytes(pid).saturating_sub(before);
        assert!(grown < 64 << 20, "the coordinator grew {} MiB for a watcher that reads nothing", grown >> 20);
        // Reading now: the snapshot, then changes merged per job (at
        // most ten messages a second), not one message per heartbeat.
        let mut messages = Vec::new();
        while let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_millis(500), lazy.message()).await {
            messages.push(e.event.unwrap());
        }
        let changes: usize = messages.iter().map(|e| match e {
            pb::watch_event::Event::Changes(c) => c.jobs.len(),
            pb::watch_event::Event::Snapshot(_) => 0,
        }).sum();
        assert!(matches!(messages.first(), Some(pb::watch_event::Event::Snapshot(_))), "the snapshot comes first");
        assert!(changes >= 1 && messages.len() < 1000, "{} messages carrying {changes} job changes for 11,200 heartbeats", messages.len());
    });
}

/// Watchers of one collection share its snapshot while nothing changes
/// (one database read and one encoding for thirty of them); after a
/// change the next watcher reads again; another user is refused even
/// while the snapshot is shared; and every watcher follows the collection
/// to its end.
#[test]
fn watchers_share_one_snapshot_and_each_follows_to_the_end() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let metrics = format!("127.0.0.1:{}", free_port());
    let farm = Farm::start_with(&["--metrics-listen", &metrics, "--user-token", "u1", "--user-token", "u2", "--max-watchers-per-client", "64"]);
    let reads = || -> u64 {
        let text = scrape_metrics(&metrics);
        text.lines().find_map(|l| l.strip_prefix("stylefarm_watch_snapshot_reads_total ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    rt().block_on(async {
        let ch = channel(&farm.url).await;
        let mut u1 = pb::farm_client::FarmClient::with_interceptor(ch.clone(), with_token("u1"));
        let mut u2 = pb::farm_client::FarmClient::with_interceptor(ch.clone(), with_token("u2"));
        let id = u1.submit(small_collection(3)).await.unwrap().into_inner().collection_id;
        let r = || pb::CollectionRef { collection_id: id.clone() };
        let mut streams = Vec::new();
        for _ in 0..30 {
            streams.push(u1.watch(r()).await.unwrap().into_inner());
        }
        let e = u2.watch(r()).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let mut stranger = pb::farm_client::FarmClient::with_interceptor(ch.clone(), with_token("nobody"));
        assert_eq!(stranger.watch(r()).await.unwrap_err().code(), Code::Unauthenticated);
        // A client with no generated code: bytes that are not a
        // CollectionRef are refused with a status; the contract's bytes get
        // the snapshot, framed as gRPC frames it.
        let mut raw = tonic::client::Grpc::new(tonic::service::interceptor::InterceptedService::new(ch.clone(), with_token("u1")));
        let path = || tonic::codegen::http::uri::PathAndQuery::from_static("/stylefarm.v2.Farm/Watch");
        raw.ready().await.unwrap();
        let e = raw.server_streaming(Request::new(bytes::Bytes::from_static(&[0xff, 0xff, 0xff])), path(), Raw).await.unwrap_err();
        assert_ne!(e.code(), Code::Ok, "{e:?}");
        raw.ready().await.unwrap();
        let request = bytes::Bytes::from(prost::Message::encode_to_vec(&r()));
        let mut frames = raw.server_streaming(Request::new(request), path(), Raw).await.unwrap().into_inner();
        let first: pb::WatchEvent = prost::Message::decode(frames.message().await.unwrap().unwrap()).unwrap();
        assert!(matches!(first.event, Some(pb::watch_event::Event::Snapshot(ref c)) if c.jobs.len() == 3), "{first:?}");
        drop(frames);
        assert_eq!(reads(), 1, "thirty-one watchers of an unchanged collection, one read");

        u1.cancel(r()).await.unwrap();
        for (i, mut s) in streams.into_iter().enumerate() {
            let mut states = std::collections::HashMap::new();
            let mut first = true;
            while let Some(e) = tokio::time::timeout(Duration::from_secs(10), s.message()).await.expect("the stream ends by itself").unwrap() {
                match e.event.unwrap() {
                    pb::watch_event::Event::Snapshot(c) => {
                        assert!(first, "watcher {i}: no resync expected");
                        assert_eq!(c.jobs.len(), 3);
                        states.extend(c.jobs.into_iter().map(|j| (j.job_id, j.state)));
                    }
                    pb::watch_event::Event::Changes(c) => {
                        assert!(!first, "watcher {i}: the snapshot comes first");
                        states.extend(c.jobs.into_iter().map(|j| (j.job_id, j.state)));
                    }
                }
                first = false;
            }
            assert!(states.len() == 3 && states.values().all(|s| *s == pb::JobState::Cancelled as i32), "watcher {i}: {states:?}");
        }
        // Changed since: a new watcher reads again, and sees it ended.
        let mut late = u1.watch(r()).await.unwrap().into_inner();
        match late.message().await.unwrap().and_then(|e| e.event) {
            Some(pb::watch_event::Event::Snapshot(c)) => assert!(c.jobs.iter().all(|j| j.state == pb::JobState::Cancelled as i32), "{c:?}"),
            other => panic!("expected a snapshot: {other:?}"),
        }
        assert_eq!(reads(), 2);
    });
}

#[test]
fn the_load_tool_finishes_a_collection_exactly_once_through_a_restart() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let o = Command::new(bin("farmctl"))
        .args(["loadtest", "--workers", "20", "--jobs", "500", "--restarts", "1", "--stall", "0.02", "--heartbeats", "5", "--lease-seconds", "2", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exactly_once"], true, "{v}");
    assert_eq!((v["jobs"].as_u64(), v["restarts"].as_u64()), (Some(500), Some(1)), "{v}");
}

/// Two coordinators on one PostgreSQL database, 20 workers dealt between
/// them, 500 jobs; the first coordinator SIGKILLed (and restarted) twice
/// mid-run. Every job ends SUCCEEDED exactly once (one acknowledged
/// Complete, one succeeded attempt), none FAILED, and watchers on the
/// survivor are told every job's end, changes reported to the other
/// coordinator included.
#[test]
fn two_coordinators_on_postgres_finish_every_job_exactly_once_through_sigkills() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Postgres);
    let pg = stylefarm_coordinator::db::testing::Postgres::from_env()
        .expect("STYLEFARM_TEST_POSTGRES is not set: run scripts/test.sh, which starts a throwaway PostgreSQL");
    let database = pg.fresh_database();
    let stylefarm_coordinator::db::Target::Postgres(url) = &database.target else { unreachable!() };
    let o = Command::new(bin("farmctl"))
        .args(["loadtest", "--workers", "20", "--jobs", "500", "--coordinators", "2", "--restarts", "2", "--watchers", "2", "--heartbeats", "10", "--lease-seconds", "2", "--json"])
        .env("STYLEFARM_DATABASE", url)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exactly_once"], true, "{v}");
    assert_eq!((v["database"].as_str(), v["coordinators"].as_u64(), v["restarts"].as_u64()), (Some("postgres"), Some(2), Some(2)), "{v}");
    assert_eq!(v["watchers_saw_the_end"].as_u64(), Some(2), "{v}");
    // The kills hit workers mid-run (so the run above went through them),
    // and each such worker found a coordinator again.
    assert!(v["worker_outage"]["outages"].as_u64() >= Some(1), "{v}");
}
