//! A collection's end is announced to its notify_url, signed, and retried
//! until the receiver takes it; a retried job re-opens the collection and
//! its next end is announced again. The receiver is a plain HTTP server on
//! loopback that fails the first two deliveries.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use stylefarm_tests::{fixture, jobs, Farm};

const SECRET: &str = "a shared secret";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    path: String,
    signature: String,
    id: String,
    body: Vec<u8>,
}

/// Answers 500 to the first `failures` requests, then 204; keeps them all.
fn receiver(failures: usize) -> (u16, Arc<Mutex<Vec<Delivery>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let kept = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split(' ').nth(1).unwrap_or_default().to_string();
            let (mut length, mut signature, mut id) = (0, String::new(), String::new());
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').unwrap();
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap(),
                    "x-stylefarm-signature" => signature = value.trim().to_string(),
                    "x-stylefarm-delivery" => id = value.trim().to_string(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let n = {
                let mut all = kept.lock().unwrap();
                all.push(Delivery { path, signature, id, body });
                all.len()
            };
            let status = if n <= failures { "500 Internal Server Error" } else { "204 No Content" };
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}

fn wait_deliveries(got: &Mutex<Vec<Delivery>>, n: usize, limit: Duration) -> Vec<Delivery> {
    let start = Instant::now();
    loop {
        let all = got.lock().unwrap().clone();
        if all.len() >= n {
            return all;
        }
        assert!(start.elapsed() < limit, "{} deliveries of {n} after {limit:?}", all.len());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks a delivery's signature as the README tells a receiver to:
/// `t=TIMESTAMP,sha256=HEX`, HEX the HMAC-SHA256 of `TIMESTAMP.URL.BODY`
/// with the URL it was sent to; the timestamp within a minute of now.
fn check_signature(d: &Delivery, url: &str) {
    let (t, hex) = d.signature.strip_prefix("t=").and_then(|rest| rest.split_once(",sha256=")).unwrap_or_else(|| panic!("not t=…,sha256=…: {}", d.signature));
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{url}.").as_bytes());
    mac.update(&d.body);
    let want: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, want, "signed over the time, this URL and the body");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(now.abs_diff(t.parse::<u64>().unwrap()) < 60, "a fresh timestamp: {t}");
    let mut other = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
    other.update(format!("{t}.{url}-elsewhere.").as_bytes());
    other.update(&d.body);
    let elsewhere: String = other.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_ne!(hex, elsewhere, "replayed to another URL, it does not verify");
}

#[test]
fn a_collections_end_is_posted_signed_and_retried_until_taken() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let (port, got) = receiver(2);
    let prefix = format!("http://127.0.0.1:{port}/hooks/");
    let mut farm = Farm::start_with(&["--notify-prefix", &prefix, "--notify-secret", SECRET, "--http-listen", "127.0.0.1:0"]);
    let (c, s) = (fixture("content.png"), fixture("style.png"));
    let submit = |notify: &str| {
        farm.farmctl(&["submit", "--content", &c, "--style", &s, "--size", "16x12", "--iters", "3", "--variant", "beta=1", "--variant", "beta=1e300", "--notify", notify])
    };

    // Only under the operator's prefix: nothing else is ever called.
    let o = submit("http://169.254.169.254/latest/meta-data");
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--notify-prefix"), "{}", String::from_utf8_lossy(&o.stderr));

    let o = submit(&format!("{prefix}render-done"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8_lossy(&o.stdout).lines().last().unwrap().trim().to_string();
    assert!(got.lock().unwrap().is_empty(), "nothing before the collection ends");
    farm.add_worker("notified");
    let st = farm.wait_for(&id, "both jobs to end", |s| jobs(s).iter().all(|j| j["state"] == "SUCCEEDED" || j["state"] == "FAILED"));

    // Two refusals, then taken: three tries of one delivery, each signed.
    let all = wait_deliveries(&got, 3, Duration::from_secs(30));
    for d in &all {
        assert_eq!(d.path, "/hooks/render-done");
        check_signature(d, &format!("{prefix}render-done"));
        assert_eq!(d.id, all[0].id, "one delivery id for all its tries");
    }
    let summary: Value = serde_json::from_slice(&all[2].body).unwrap();
    assert_eq!((summary["collection_id"].as_str(), summary["state"].as_str()), (Some(id.as_str()), Some("failed")), "{summary}");
    assert_eq!((summary["counts"]["succeeded"].as_u64(), summary["counts"]["failed"].as_u64()), (Some(1), Some(1)), "{summary}");
    let failure = &summary["failures"][0];
    let failed = jobs(&st).iter().find(|j| j["state"] == "FAILED").unwrap();
    assert_eq!(failure["job_id"], failed["job_id"]);
    assert_eq!(failure["variant"], "beta=1e+300", "the variant by its label, as everywhere: {failure}");
    assert!(failure["error"].as_str().unwrap().contains("beta"), "the cause, as the job page says it: {failure}");
    let page = summary["links"]["collection"].as_str().unwrap();
    assert!(page.starts_with(farm.dashboard.as_deref().unwrap().trim_end_matches('/')) && page.ends_with(&format!("#/c/{id}")), "{page}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(got.lock().unwrap().len(), 3, "taken once: not sent again");

    // Retried with a change that works, the job succeeds, and the
    // collection's second end is announced as a new delivery.
    let job = failed["job_id"].as_str().unwrap();
    let o = farm.farmctl(&["retry", job, "--set", "beta=1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    farm.wait_for(&id, "the retried job to succeed", stylefarm_tests::all_succeeded);
    let all = wait_deliveries(&got, 4, Duration::from_secs(30));
    let again: Value = serde_json::from_slice(&all[3].body).unwrap();
    assert_ne!(all[3].id, all[0].id);
    assert_eq!((again["state"].as_str(), again["counts"]["succeeded"].as_u64(), again["failures"].as_array().map(Vec::len)), (Some("succeeded"), Some(2), Some(0)), "{again}");
}

/// Accepts connections and never answers: a receiver as slow as can be.
fn black_hole() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.extend(stream.ok());
        }
    });
    port
}

/// One user's twenty collections aimed at a receiver that never answers
/// take at most a few of the coordinator's delivery slots: another user's
/// notification goes out at the next poll. (Before, they held all sixteen
/// for minutes, retries and waits included.)
#[test]
fn one_users_slow_receiver_does_not_hold_up_anothers_notification() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let (slow, (fast, got)) = (black_hole(), receiver(0));
    let (slow_prefix, fast_prefix) = (format!("http://127.0.0.1:{slow}/"), format!("http://127.0.0.1:{fast}/"));
    let farm = Farm::start_with(&[
        "--notify-prefix", &slow_prefix, "--notify-prefix", &fast_prefix, "--notify-secret", SECRET,
        "--user-token", "alice", "--user-token", "bob",
    ]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = |token: &'static str| {
            let url = farm.url.clone();
            async move { stylefarm_proto::farm_client::FarmClient::with_interceptor(stylefarm_tests::channel(&url).await, stylefarm_tests::with_token(token)) }
        };
        let (mut alice, mut bob) = (client("alice").await, client("bob").await);
        for i in 0..20 {
            let r = stylefarm_proto::SubmitRequest { notify_url: format!("{slow_prefix}alice-{i}"), ..stylefarm_tests::small_submit(1, 1) };
            let id = alice.submit(r).await.unwrap().into_inner().collection_id;
            alice.cancel(stylefarm_proto::CollectionRef { collection_id: id }).await.unwrap();
        }
        // Alice's deliveries are under way, hanging.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = stylefarm_proto::SubmitRequest { notify_url: format!("{fast_prefix}bob"), ..stylefarm_tests::small_submit(1, 1) };
        let id = bob.submit(r).await.unwrap().into_inner().collection_id;
        bob.cancel(stylefarm_proto::CollectionRef { collection_id: id.clone() }).await.unwrap();
        let start = Instant::now();
        let all = wait_deliveries(&got, 1, Duration::from_secs(8));
        eprintln!("bob's notification arrived {:.1} s after his collection ended", start.elapsed().as_secs_f64());
        let summary: Value = serde_json::from_slice(&all[0].body).unwrap();
        assert_eq!((summary["collection_id"].as_str(), summary["state"].as_str()), (Some(id.as_str()), Some("cancelled")), "{summary}");
    });
}

/// Two coordinators on one PostgreSQL, both sending notifications: each
/// collection's end is POSTed once, under one delivery id. (Before, each
/// coordinator sent its own: 10 POSTs with 10 ids for 5 collections.)
#[test]
fn two_coordinators_announce_each_collection_once() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Postgres);
    let (port, got) = receiver(0);
    let prefix = format!("http://127.0.0.1:{port}/hooks/");
    let (database, url) = stylefarm_tests::postgres_database();
    let notify = ["--notify-prefix", prefix.as_str(), "--notify-secret", SECRET];
    let a = Farm::start_on(Some(database), &notify);
    let (dir, mut procs) = (tempfile::tempdir().unwrap(), stylefarm_tests::Procs(Vec::new()));
    let b_url = a.second_coordinator(&url, dir.path(), &notify, &[], &mut procs);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ids: Vec<String> = rt.block_on(async {
        let (mut to_a, mut to_b) = (
            stylefarm_proto::farm_client::FarmClient::new(stylefarm_tests::channel(&a.url).await),
            stylefarm_proto::farm_client::FarmClient::new(stylefarm_tests::channel(&b_url).await),
        );
        let mut ids = Vec::new();
        for i in 0..5 {
            let r = stylefarm_proto::SubmitRequest { notify_url: format!("{prefix}c{i}"), ..stylefarm_tests::small_submit(1, 1) };
            let farm = if i % 2 == 0 { &mut to_a } else { &mut to_b };
            let id = farm.submit(r).await.unwrap().into_inner().collection_id;
            farm.cancel(stylefarm_proto::CollectionRef { collection_id: id.clone() }).await.unwrap();
            ids.push(id);
        }
        ids
    });
    wait_deliveries(&got, 5, Duration::from_secs(20));
    // Both coordinators poll every second: give a second delivery time
    // to show.
    std::thread::sleep(Duration::from_secs(3));
    let all = got.lock().unwrap().clone();
    let mut announced: Vec<String> = all.iter().map(|d| serde_json::from_slice::<Value>(&d.body).unwrap()["collection_id"].as_str().unwrap().to_string()).collect();
    announced.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(announced, want, "each collection once: {} POSTs", all.len());
    let delivery_ids: std::collections::BTreeSet<&str> = all.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(delivery_ids.len(), 5, "one delivery id each");
}
