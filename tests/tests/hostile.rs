//! The farm against hostile clients, as a stranger would write them from
//! `farm.proto` and the README: raw HTTP bodies, hand-encoded protobuf
//! bytes over a plain gRPC channel, silent sockets. Each attack runs while
//! a witness watches: another user reads their collection every 20 ms (its
//! p99 must stay under 100 ms) and a healthy worker holds a lease and
//! heartbeats every half second (it must keep its lease and get no strike).
//!
//! The attacks run one after another in one test, so no other test's load
//! stands in the witness's way. `bench/attacks.sh` runs this file in
//! release with the figures printed (BENCHMARKS.md has them).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::BufMut;
use stylefarm_proto as pb;
use stylefarm_tests::{channel, fixture, rss_mib, small_submit, with_token, Farm, Raw};
use tonic::Code;

const ALICE: &str = "alice-token"; // the attacker, a user like any other
const BOB: &str = "bob-token"; // the witness
const WORKER: &str = "worker-token";

type Interceptor = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send + Sync>>;

fn as_user(ch: &tonic::transport::Channel, token: &str) -> pb::farm_client::FarmClient<Interceptor> {
    let mut add = with_token(token);
    let boxed: Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send + Sync> = Box::new(move |r| add(r));
    pb::farm_client::FarmClient::new(tonic::service::interceptor::InterceptedService::new(ch.clone(), boxed)).max_encoding_message_size(256 << 20)
}

fn as_worker(ch: &tonic::transport::Channel) -> pb::workers_client::WorkersClient<Interceptor> {
    let mut add = with_token(WORKER);
    let boxed: Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send + Sync> = Box::new(move |r| add(r));
    pb::workers_client::WorkersClient::new(tonic::service::interceptor::InterceptedService::new(ch.clone(), boxed))
}

fn small_collection(name: &str) -> pb::SubmitRequest {
    pb::SubmitRequest { name: name.into(), ..small_submit(1, 5) }
}

/// Bob's collection read every 20 ms, and a healthy worker holding a lease
/// on one of its jobs, heartbeating every 500 ms, for as long as an attack
/// runs.
struct Witness {
    stop: Arc<AtomicBool>,
    latencies: Arc<Mutex<Vec<Duration>>>,
    heartbeat_errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

/// The healthy worker: registered once, holding one lease throughout.
struct Healthy {
    worker_id: String,
    job_id: String,
    token: u64,
}

impl Witness {
    fn start(ch: &tonic::transport::Channel, collection: &str, worker: &Healthy) -> Witness {
        let stop = Arc::new(AtomicBool::new(false));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let heartbeat_errors = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        {
            let (mut bob, stop, latencies, id) = (as_user(ch, BOB), stop.clone(), latencies.clone(), collection.to_string());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let start = Instant::now();
                    bob.get_collection(pb::CollectionRef { collection_id: id.clone() }).await.expect("the witness reads its own collection");
                    latencies.lock().unwrap().push(start.elapsed());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        {
            let (mut w, stop, errors) = (as_worker(ch), stop.clone(), heartbeat_errors.clone());
            let (worker_id, job_id, fencing_token) = (worker.worker_id.clone(), worker.job_id.clone(), worker.token);
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let progress = pb::Progress { iteration: 1, iterations: 5, total: 1.0, ..Default::default() };
                    let r = pb::HeartbeatRequest { worker_id: worker_id.clone(), job_id: job_id.clone(), fencing_token, progress: Some(progress), ..Default::default() };
                    match tokio::time::timeout(Duration::from_secs(5), w.heartbeat(r)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => errors.lock().unwrap().push(e.to_string()),
                        Err(_) => errors.lock().unwrap().push("a heartbeat took over 5 s".into()),
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }));
        }
        Witness { stop, latencies, heartbeat_errors, tasks, started: Instant::now() }
    }

    /// Stops watching; asserts what the witness saw during `attack` and
    /// prints its figures.
    async fn check(self, attack: &str, ch: &tonic::transport::Channel, worker: &Healthy) {
        // At least two seconds of readings, however quickly the attack ended.
        tokio::time::sleep(Duration::from_secs(2).saturating_sub(self.started.elapsed())).await;
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let mut l = self.latencies.lock().unwrap().clone();
        l.sort();
        assert!(l.len() >= 10, "{attack}: the witness read only {} times", l.len());
        let p99 = l[(l.len() * 99 / 100).min(l.len() - 1)];
        println!("{attack:<48} witness GetCollection: {} reads, p50 {:>5.1} ms, p99 {:>5.1} ms, max {:>6.1} ms", l.len(), ms(l[l.len() / 2]), ms(p99), ms(l[l.len() - 1]));
        assert!(p99 < Duration::from_millis(100), "{attack}: another user's GetCollection p99 was {p99:?}");
        let errors = self.heartbeat_errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "{attack}: the healthy worker's heartbeats failed: {errors:?}");
        let mut f = as_user(ch, BOB);
        let workers = f.list_workers(pb::ListWorkersRequest::default()).await.unwrap().into_inner().workers;
        let me = workers.iter().find(|w| w.worker_id == worker.worker_id).expect("the healthy worker is listed");
        assert!(me.strikes == 0 && !me.quarantined, "{attack}: the healthy worker got a strike: {me:?}");
        assert_eq!(me.current_job, worker.job_id, "{attack}: the healthy worker lost its lease");
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// An 8192×8192 PNG of one colour: 195 KB to send, 200 MB to decode.
fn huge_png() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(8192, 8192, image::Rgb([40, 90, 160]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn no_single_client_takes_the_farm_down() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let farm = Farm::start_with(&[
        "--http-listen", "127.0.0.1:0", "--user-token", ALICE, "--user-token", BOB, "--worker-token", WORKER, "--work-threads", "1",
    ]);
    let pid = farm.coordinator.as_ref().unwrap().id();
    let dashboard = farm.dashboard.clone().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let ch = channel(&farm.url).await;
        let http = reqwest::Client::new();
        let bob_collection = as_user(&ch, BOB).submit(small_collection("bob")).await.unwrap().into_inner().collection_id;
        let mut w = as_worker(&ch);
        let worker_id = w.register(pb::RegisterRequest { name: "healthy".into(), device: "cpu".into(), ..Default::default() }).await.unwrap().into_inner().worker_id;
        let lease = w.lease(pb::LeaseRequest { worker_id: worker_id.clone(), free_memory_bytes: 0 }).await.unwrap().into_inner();
        let healthy = Healthy { worker_id: worker_id.clone(), job_id: lease.job.unwrap().job_id, token: lease.fencing_token };

        // 1. No token, two 64 MiB bodies at once: refused before they are read.
        let witness = Witness::start(&ch, &bob_collection, &healthy);
        let before = rss_mib(pid);
        let start = Instant::now();
        let body = Arc::new(format!("{{\"contents\":[],\"styles\":[],\"variants_json\":[[{}0]]}}", "0,".repeat(32 << 20)));
        let sends = (0..2).map(|_| {
            let (http, url, body) = (http.clone(), format!("{dashboard}api/collections"), body.clone());
            tokio::spawn(async move { http.post(url).header("content-type", "application/json").body(body.as_str().to_owned()).send().await })
        });
        for send in sends.collect::<Vec<_>>() {
            match send.await.unwrap() {
                Ok(r) => assert_eq!(r.status(), 401, "a body without a token"),
                // The coordinator answered and closed before the client
                // finished sending: refused all the same.
                Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
            }
        }
        let refused_in = start.elapsed();
        let grown = rss_mib(pid).saturating_sub(before);
        witness.check("no token, 2 x 64 MiB JSON bodies", &ch, &healthy).await;
        println!("    refused in {:.2} s; the coordinator grew {grown} MiB", refused_in.as_secs_f64());
        assert!(grown < 64, "the coordinator grew {grown} MiB reading bodies it should have refused");

        // 2. A variant whose expansion would not fit a worker's Lease reply.
        let witness = Witness::start(&ch, &bob_collection, &healthy);
        let png = base64::engine::general_purpose::STANDARD.encode(std::fs::read(fixture("content.png")).unwrap());
        let layers = vec![serde_json::json!({"layer": "conv4_2", "weight": 1.0}); 140_000];
        let submit = serde_json::json!({
            "contents": [{"name": "c", "data": png}], "styles": [{"name": "s", "data": png}],
            "variants_json": [serde_json::json!({"content_layers": layers}).to_string()], "width": 8, "height": 8,
        });
        let r = http.post(format!("{dashboard}api/collections")).bearer_auth(ALICE).json(&submit).send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("variant v0 is") && text.contains("at most 16384"), "{text}");
        let mut alice = as_user(&ch, ALICE);
        let mut many = small_collection("many-layers");
        many.variants_json = vec![r#"{"content_layers": [{"layer": "conv4_2", "weight": 1}, {"layer": "conv4_2", "weight": 1}]}"#.into()];
        let e = alice.submit(many).await.unwrap_err();
        assert!(e.code() == Code::InvalidArgument && e.message().contains("listed twice"), "{e:?}");
        witness.check("a 4 MiB variant; a layer listed twice", &ch, &healthy).await;

        // 3. A burst of submits of 8192x8192 PNGs from one user: two are
        // read at a time (one decode thread), the third is refused, and
        // nobody else waits.
        let big = huge_png();
        let witness = Witness::start(&ch, &bob_collection, &healthy);
        let start = Instant::now();
        let bursts: Vec<_> = (0..3)
            .map(|i| {
                let mut alice = as_user(&ch, ALICE);
                let mut r = small_collection(&format!("burst-{i}"));
                r.contents = (0..4).map(|k| pb::InputImage { name: format!("big{k}"), source: Some(pb::input_image::Source::Data(big.clone())) }).collect();
                tokio::spawn(async move { alice.submit(r).await.map(|_| ()) })
            })
            .collect();
        let mut outcomes = Vec::new();
        for b in bursts {
            outcomes.push(b.await.unwrap());
        }
        let accepted = outcomes.iter().filter(|o| o.is_ok()).count();
        let refused: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
        witness.check("3 submits of 4 x 8192x8192 PNGs at once", &ch, &healthy).await;
        println!("    {accepted} accepted, {} refused, in {:.1} s", refused.len(), start.elapsed().as_secs_f64());
        assert_eq!((accepted, refused.len()), (2, 1), "two read at a time, the third refused: {outcomes:?}");
        for e in &refused {
            assert!(e.code() == Code::ResourceExhausted && e.message().contains("--max-submits-per-client 2"), "{e:?}");
        }

        // 4. A Submit of 20 million empty InputImages (40 MiB on the wire),
        // hand-encoded: refused before it is built.
        let witness = Witness::start(&ch, &bob_collection, &healthy);
        let before = rss_mib(pid);
        let mut wire = bytes::BytesMut::with_capacity(40 << 20);
        for _ in 0..20_000_000 {
            wire.put_slice(&[0x12, 0x00]); // field 2 (contents), an empty message
        }
        let mut raw = tonic::client::Grpc::new(tonic::service::interceptor::InterceptedService::new(ch.clone(), with_token(ALICE))).max_encoding_message_size(256 << 20);
        raw.ready().await.unwrap();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/stylefarm.v2.Farm/Submit");
        let e = raw.unary(tonic::Request::new(wire.freeze()), path, Raw).await.unwrap_err();
        assert!(e.code() == Code::InvalidArgument && e.message().contains("occurs more than 100000"), "{e:?}");
        let grown = rss_mib(pid).saturating_sub(before);
        witness.check("20 M empty InputImages in one Submit", &ch, &healthy).await;
        println!("    the coordinator grew {grown} MiB");
        assert!(grown < 200, "the coordinator grew {grown} MiB for a message it refused unbuilt");

        // 5. What a worker reports is checked; one lease per worker.
        let witness = Witness::start(&ch, &bob_collection, &healthy);
        let mut rogue = as_worker(&ch);
        let bad = [
            pb::RegisterRequest { name: "x".repeat(900 << 10), device: "cpu".into(), ..Default::default() },
            pb::RegisterRequest { name: "big".into(), device: "cpu".into(), memory_bytes: 1 << 63, ..Default::default() },
        ];
        for r in bad {
            let e = rogue.register(r).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        }
        let rogue_id = rogue.register(pb::RegisterRequest { name: "rogue".into(), device: "cpu".into(), ..Default::default() }).await.unwrap().into_inner().worker_id;
        let first = rogue.lease(pb::LeaseRequest { worker_id: rogue_id.clone(), free_memory_bytes: 0 }).await.unwrap().into_inner();
        let again = rogue.lease(pb::LeaseRequest { worker_id: rogue_id.clone(), free_memory_bytes: 0 }).await.unwrap().into_inner();
        let job = first.job.expect("a queued job for the rogue");
        assert_eq!((again.job.map(|j| j.job_id), again.fencing_token), (Some(job.job_id.clone()), first.fencing_token), "one lease at a time");
        for progress in [
            pb::Progress { iteration: 999_999, iterations: 999_999, ..Default::default() },
            pb::Progress { iteration: 1, iterations: 2, total: -1e300, ..Default::default() },
            pb::Progress { iteration: 3, iterations: 2, ..Default::default() },
        ] {
            let r = pb::HeartbeatRequest { worker_id: rogue_id.clone(), job_id: job.job_id.clone(), fencing_token: first.fencing_token, progress: Some(progress.clone()), ..Default::default() };
            let e = rogue.heartbeat(r).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{progress:?}: {e:?}");
        }
        witness.check("forged worker reports", &ch, &healthy).await;

        // 6. A slowloris on both ports from another address: a few hundred
        // silent connections hold their own address's places, nobody
        // else's, and are closed after 10 s.
        let witness = Witness::start(&ch, &bob_collection, &healthy);
        let ports = [farm.port, dashboard.trim_end_matches('/').rsplit(':').next().unwrap().parse::<u16>().unwrap()];
        let mut silent = Vec::new();
        for i in 0..300 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            if let Ok(s) = socket.connect(format!("127.0.0.1:{}", ports[i % 2]).parse().unwrap()).await {
                silent.push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let page = http.get(&dashboard).send().await.unwrap();
        assert_eq!(page.status(), 200, "the dashboard still answers other addresses");
        let mut closed = 0;
        for s in &silent {
            let mut b = [0u8; 1];
            if matches!(tokio::time::timeout(Duration::from_millis(5), s.peek(&mut b)).await, Ok(Ok(0)) | Ok(Err(_))) {
                closed += 1;
            }
        }
        assert!(closed >= 300 - 256, "{closed} of 300 closed at once; 256 an address may hold");
        tokio::time::sleep(Duration::from_secs(11)).await;
        let mut after = 0;
        for s in &silent {
            let mut b = [0u8; 1];
            if matches!(tokio::time::timeout(Duration::from_millis(5), s.peek(&mut b)).await, Ok(Ok(0)) | Ok(Err(_))) {
                after += 1;
            }
        }
        assert_eq!(after, silent.len(), "every silent connection is closed after 10 s");
        witness.check("300 silent connections from 127.0.0.2", &ch, &healthy).await;
        println!("    {closed} closed at once, all {after} after 10 s");

        // 7. Cross-site requests: another Origin may not change state.
        let r = http
            .post(format!("{dashboard}api/collections/{bob_collection}/cancel"))
            .bearer_auth(BOB)
            .header("origin", "http://evil.example")
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    });
}
