//! The coordinator as a library: started on port 0 inside the test's own
//! runtime, called over gRPC, and stopped by its shutdown future.

use std::time::Duration;

use stylefarm_coordinator::Config;
use stylefarm_proto as pb;

fn config(dir: &std::path::Path) -> Config {
    Config { lease_seconds: 3, heartbeat_seconds: 1, ..Config::new(dir.join("data")) }
}

/// A coordinator on port 0 in this runtime: its URL, the sender that stops
/// it, and the task `run` returns from.
async fn start(dir: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Result<(), stylefarm_coordinator::Error>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(stylefarm_coordinator::run(config(dir), listener, async move {
        let _ = stopped.await;
    }));
    (url, stop, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_port_zero_and_stops_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let (url, stop, server) = start(dir.path()).await;

    let mut farm = pb::farm_client::FarmClient::connect(url.clone()).await.unwrap();
    let listed = farm.list_collections(pb::ListCollectionsRequest::default()).await.unwrap().into_inner();
    assert!(listed.collections.is_empty());
    let mut workers = pb::workers_client::WorkersClient::connect(url.clone()).await.unwrap();
    let registered = workers
        .register(pb::RegisterRequest { name: "w".into(), device: "cpu".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(registered.worker_id.starts_with("w-"), "{}", registered.worker_id);
    assert!(dir.path().join("data/farm.db").exists(), "the database is where the config says");

    stop.send(()).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), server).await.expect("run returns after shutdown");
    ended.unwrap().unwrap();
    assert!(pb::farm_client::FarmClient::connect(url).await.is_err(), "nothing listens any more");
}

fn upload(name: &str, fixture: &str) -> pb::InputImage {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(fixture);
    pb::InputImage { name: name.into(), source: Some(pb::input_image::Source::Data(std::fs::read(path).unwrap())) }
}

/// `blend_styles` as a client written against farm.proto alone sees it:
/// weights that do not match the styles are refused by name before
/// anything is stored; a blended collection is one job per content that
/// reads every style, in the order submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blended_submission_is_one_job_reading_every_style_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (url, stop, server) = start(dir.path()).await;
    let mut farm = pb::farm_client::FarmClient::connect(url.clone()).await.unwrap();
    let request = |variant: &str| pb::SubmitRequest {
        contents: vec![upload("cat", "content.png")],
        styles: vec![upload("waves", "style.png"), upload("dots", "init.png")],
        variants_json: vec![variant.into()],
        width: 16,
        height: 12,
        blend_styles: true,
        ..Default::default()
    };

    let refused = farm.submit(request(r#"{"style_blend": [1.0, 2.0, 3.0]}"#)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("style_blend"), "{}", refused.message());
    assert!(farm.list_collections(pb::ListCollectionsRequest::default()).await.unwrap().into_inner().collections.is_empty());

    let submitted = farm.submit(request(r#"{"style_blend": [0.7, 0.3]}"#)).await.unwrap().into_inner();
    assert_eq!(submitted.jobs, 1);
    let collection = farm.get_collection(pb::CollectionRef { collection_id: submitted.collection_id }).await.unwrap().into_inner();
    assert_eq!((collection.contents, collection.styles, collection.jobs[0].style_name.as_str()), (1, 1, "waves+dots"));

    let mut workers = pb::workers_client::WorkersClient::connect(url).await.unwrap();
    let worker_id = workers
        .register(pb::RegisterRequest { name: "w".into(), device: "cpu".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    let job = workers.lease(pb::LeaseRequest { worker_id, free_memory_bytes: 0 }).await.unwrap().into_inner().job.expect("a job to lease");
    let digest = |fixture: &str| match upload("x", fixture).source {
        Some(pb::input_image::Source::Data(d)) => format!("inputs/{:x}", sha2_digest(&d)),
        _ => unreachable!(),
    };
    assert_eq!(job.style_keys, vec![digest("style.png"), digest("init.png")], "both styles, in the order submitted");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

fn sha2_digest(bytes: &[u8]) -> impl std::fmt::LowerHex {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
}

/// A 1×1 collection per content given, uploaded by a plain client.
async fn submit(farm: &mut pb::farm_client::FarmClient<tonic::transport::Channel>, contents: usize) -> String {
    let request = pb::SubmitRequest {
        contents: (0..contents).map(|i| upload(&format!("c{i}"), "content.png")).collect(),
        styles: vec![upload("s", "style.png")],
        variants_json: vec![r#"{"iters": 1}"#.into()],
        width: 8,
        height: 8,
        ..Default::default()
    };
    farm.submit(request).await.unwrap().into_inner().collection_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_through_everything_once_and_refuse_a_made_up_page_token() {
    let dir = tempfile::tempdir().unwrap();
    let (url, stop, server) = start(dir.path()).await;
    let mut farm = pb::farm_client::FarmClient::connect(url.clone()).await.unwrap();
    let big = submit(&mut farm, 25).await;
    for _ in 0..4 {
        submit(&mut farm, 1).await;
    }

    let (mut jobs, mut token) = (Vec::new(), String::new());
    loop {
        let page = farm.list_jobs(pb::ListJobsRequest { collection_id: big.clone(), page_size: 10, page_token: token }).await.unwrap().into_inner();
        assert!(page.jobs.len() <= 10);
        jobs.extend(page.jobs.into_iter().map(|j| (j.content_index, j.job_id)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let whole = farm.get_collection(pb::CollectionRef { collection_id: big.clone() }).await.unwrap().into_inner();
    assert_eq!(jobs, whole.jobs.iter().map(|j| (j.content_index, j.job_id.clone())).collect::<Vec<_>>(), "every job once, in order");

    let (mut collections, mut token) = (Vec::new(), String::new());
    loop {
        let page = farm.list_collections(pb::ListCollectionsRequest { page_size: 2, page_token: token }).await.unwrap().into_inner();
        assert!(page.collections.iter().all(|c| c.jobs.is_empty() && c.counts.is_some()), "pages carry counts, not jobs");
        collections.extend(page.collections);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(collections.len(), 5);
    assert_eq!((collections[0].collection_id.as_str(), collections[0].counts.clone().unwrap().queued), (big.as_str(), 25));

    let bad = farm.list_collections(pb::ListCollectionsRequest { page_size: 2, page_token: "not-a-token".into() }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_files_are_listed_and_large_ones_fetched_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let (url, stop, server) = start(dir.path()).await;
    let mut farm = pb::farm_client::FarmClient::connect(url.clone()).await.unwrap();
    let id = submit(&mut farm, 1).await;
    let mut workers = pb::workers_client::WorkersClient::connect(url).await.unwrap();
    let worker_id = workers.register(pb::RegisterRequest { name: "w".into(), device: "cpu".into(), ..Default::default() }).await.unwrap().into_inner().worker_id;
    let lease = workers.lease(pb::LeaseRequest { worker_id, free_memory_bytes: 0 }).await.unwrap().into_inner();
    let job = lease.job.unwrap();
    let before = farm.list_job_files(pb::JobRef { job_id: job.job_id.clone() }).await.unwrap().into_inner();
    assert_eq!((before.attempt, before.files.len()), (1, 0));

    // The worker writes its files; one is 2.5 MiB.
    let folder = dir.path().join("data/storage").join(&job.prefix);
    std::fs::create_dir_all(folder.join("tb")).unwrap();
    let big: Vec<u8> = (0..(5u32 << 19)).map(|i| (i % 251) as u8).collect();
    std::fs::write(folder.join("output.png"), &big).unwrap();
    std::fs::write(folder.join("losses.jsonl"), b"{}\n").unwrap();
    std::fs::write(folder.join("tb/events.out.tfevents.1"), b"e").unwrap();
    let files = farm.list_job_files(pb::JobRef { job_id: job.job_id.clone() }).await.unwrap().into_inner().files;
    let names: Vec<(&str, u64)> = files.iter().map(|f| (f.name.as_str(), f.size_bytes)).collect();
    assert_eq!(names, [("losses.jsonl", 3), ("output.png", big.len() as u64), ("tb/events.out.tfevents.1", 1)]);

    let key = files.iter().find(|f| f.name == "output.png").unwrap().key.clone();
    assert!(key.starts_with(&format!("collections/{id}/")), "{key}");
    let mut stream = farm.fetch(pb::FetchRequest { collection_id: id, key }).await.unwrap().into_inner();
    let (mut chunks, mut data, mut total) = (0, Vec::new(), 0);
    while let Some(c) = stream.message().await.unwrap() {
        assert!(c.data.len() <= 1 << 20, "chunks of at most 1 MiB");
        if chunks == 0 {
            total = c.total_bytes;
        }
        chunks += 1;
        data.extend_from_slice(&c.data);
    }
    assert_eq!((chunks, total, data == big), (3, big.len() as u64, true));
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_can_be_cancelled_and_retried_and_a_failed_one_retried_with_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (url, stop, server) = start(dir.path()).await;
    let mut farm = pb::farm_client::FarmClient::connect(url.clone()).await.unwrap();
    let id = submit(&mut farm, 2).await;
    let jobs = farm.get_collection(pb::CollectionRef { collection_id: id }).await.unwrap().into_inner().jobs;
    let (first, second) = (jobs[0].job_id.clone(), jobs[1].job_id.clone());
    let job = |id: &str| pb::JobRef { job_id: id.into() };
    let retry = |id: &str, changes: &str| pb::RetryJobRequest { job_id: id.into(), changes_json: changes.into() };

    // The second job is cancelled alone; the first fails for bad input.
    let cancelled = farm.cancel_job(job(&second)).await.unwrap().into_inner();
    assert_eq!(cancelled.state, pb::JobState::Cancelled as i32);
    assert_eq!(farm.cancel_job(job(&second)).await.unwrap_err().code(), tonic::Code::FailedPrecondition, "cancelled is final");
    assert_eq!(farm.retry_job(retry(&first, "")).await.unwrap_err().code(), tonic::Code::FailedPrecondition, "a queued job is not retried");
    let mut workers = pb::workers_client::WorkersClient::connect(url).await.unwrap();
    let worker_id = workers.register(pb::RegisterRequest { name: "w".into(), device: "cpu".into(), ..Default::default() }).await.unwrap().into_inner().worker_id;
    let lease = workers.lease(pb::LeaseRequest { worker_id: worker_id.clone(), free_memory_bytes: 0 }).await.unwrap().into_inner();
    assert_eq!(lease.job.as_ref().map(|j| j.job_id.as_str()), Some(first.as_str()), "the cancelled job is not leased");
    let fail = pb::FailRequest { worker_id: worker_id.clone(), job_id: first.clone(), fencing_token: lease.fencing_token, kind: pb::FailureKind::BadInput as i32, message: "bad".into() };
    workers.fail(fail).await.unwrap();

    // A change a submit would refuse is refused by name, and the job
    // stays as it was.
    let bad = farm.retry_job(retry(&first, r#"{"betta": 5}"#)).await.unwrap_err();
    assert!(bad.code() == tonic::Code::InvalidArgument && bad.message().contains("betta"), "{bad:?}");
    let still = farm.get_job(job(&first)).await.unwrap().into_inner().job.unwrap();
    assert_eq!(still.state, pb::JobState::Failed as i32);

    let retried = farm.retry_job(retry(&first, r#"{"beta": 5, "iters": 3}"#)).await.unwrap().into_inner();
    assert_eq!((retried.state, retried.failures, retried.error.as_str()), (pb::JobState::Queued as i32, 0, ""));
    let again = workers.lease(pb::LeaseRequest { worker_id: worker_id.clone(), free_memory_bytes: 0 }).await.unwrap().into_inner();
    let spec = again.job.clone().unwrap();
    assert_eq!((spec.job_id.as_str(), again.attempt), (first.as_str(), 2), "the retried job runs again, a new attempt beside the old");
    let params: serde_json::Value = serde_json::from_str(&spec.params_json).unwrap();
    assert_eq!((params["beta"].as_f64(), params["iters"].as_u64(), spec.resume_key.as_str()), (Some(5.0), Some(3), ""), "{params}");
    let detail = farm.get_job(job(&first)).await.unwrap().into_inner();
    assert_eq!(detail.attempts.len(), 2, "the failed attempt is kept");
    let progress = detail.job.unwrap().progress.unwrap_or_default();
    assert_eq!((progress.iteration, progress.iterations), (0, 3), "progress starts again, out of the new iterations");

    // A cancelled job is retried too (as it was).
    let back = farm.retry_job(retry(&second, "")).await.unwrap().into_inner();
    assert_eq!(back.state, pb::JobState::Queued as i32);
    assert_eq!(farm.retry_job(retry("no-such-job", "")).await.unwrap_err().code(), tonic::Code::NotFound);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// The bytes of `dir`'s SQLite database, its write-ahead log included.
fn database_bytes(dir: &std::path::Path) -> u64 {
    ["farm.db", "farm.db-wal"].iter().map(|f| std::fs::metadata(dir.join("data").join(f)).map_or(0, |m| m.len())).sum()
}

/// A submit at the limits of what names may cost: 200 contents and one
/// blended column of 1,000 styles with 100-byte names. The database grows
/// by a small multiple of the request, not by the column's name on every
/// job (which grew it 90-fold here, 1,149-fold in the issue's attack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blended_submit_grows_the_database_by_a_small_multiple_of_its_size() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let (url, stop, server) = start(dir.path()).await;
    let mut farm = pb::farm_client::FarmClient::connect(url.clone()).await.unwrap().max_decoding_message_size(64 << 20);
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(2, 2, image::Rgb([200, 100, 50])).write_to(&mut png, image::ImageFormat::Png).unwrap();
    let input = |name: String| pb::InputImage { name, source: Some(pb::input_image::Source::Data(png.get_ref().clone())) };
    let request = pb::SubmitRequest {
        contents: (0..200).map(|i| input(format!("c{i}"))).collect(),
        styles: (0..1000).map(|i| input(format!("{i:0>100}"))).collect(),
        variants_json: vec!["{}".into()],
        width: 16,
        height: 16,
        blend_styles: true,
        ..Default::default()
    };
    let request_bytes = request.encoded_len() as u64;
    farm.list_collections(pb::ListCollectionsRequest::default()).await.unwrap();
    let before = database_bytes(dir.path());
    let submitted = farm.submit(request).await.unwrap().into_inner();
    let c = farm.get_collection(pb::CollectionRef { collection_id: submitted.collection_id }).await.unwrap().into_inner();
    let grown = database_bytes(dir.path()).saturating_sub(before);
    eprintln!("request {request_bytes} bytes, database grew {grown} bytes ({:.2}x)", grown as f64 / request_bytes as f64);
    assert_eq!(c.jobs.len(), 200);
    assert!(c.jobs.iter().all(|j| j.style_name.len() <= 100 && j.style_name.ends_with("_styles")), "{}", c.jobs[0].style_name);
    assert!(grown <= 4 * request_bytes, "request {request_bytes} bytes, database grew {grown}");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// The state of `job` in a Watch's first message (its snapshot).
async fn first_seen(farm: &mut pb::farm_client::FarmClient<tonic::transport::Channel>, collection: &str, job: &str) -> i32 {
    let mut stream = farm.watch(pb::CollectionRef { collection_id: collection.into() }).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().expect("a snapshot first");
    let Some(pb::watch_event::Event::Snapshot(c)) = first.event else { panic!("the first message is not a snapshot: {first:?}") };
    c.jobs.iter().find(|j| j.job_id == job).expect("the job is in its collection's snapshot").state
}

/// A Watch that starts after a change never reports the state before it,
/// even while another watcher of the collection keeps its merger (and its
/// shared snapshot) alive: retried then watched, cancelled then watched,
/// 50 times each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_started_after_a_change_sees_the_change() {
    let dir = tempfile::tempdir().unwrap();
    let (url, stop, server) = start(dir.path()).await;
    let mut farm = pb::farm_client::FarmClient::connect(url.clone()).await.unwrap();
    let id = submit(&mut farm, 1).await;
    let job = farm.get_collection(pb::CollectionRef { collection_id: id.clone() }).await.unwrap().into_inner().jobs[0].job_id.clone();
    farm.cancel_job(pb::JobRef { job_id: job.clone() }).await.unwrap();
    // Someone keeps the collection's page open all along.
    let mut page = farm.watch(pb::CollectionRef { collection_id: id.clone() }).await.unwrap().into_inner();
    let page_reader = tokio::spawn(async move { while let Ok(Some(_)) = page.message().await {} });
    let (queued, cancelled) = (pb::JobState::Queued as i32, pb::JobState::Cancelled as i32);
    for round in 0..50 {
        farm.retry_job(pb::RetryJobRequest { job_id: job.clone(), changes_json: String::new() }).await.unwrap();
        assert_eq!(first_seen(&mut farm, &id, &job).await, queued, "round {round}: watched right after the retry");
        farm.cancel_job(pb::JobRef { job_id: job.clone() }).await.unwrap();
        assert_eq!(first_seen(&mut farm, &id, &job).await, cancelled, "round {round}: watched right after the cancel");
    }
    page_reader.abort();
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// A collection is paused (its queued jobs wait, another's are leased),
/// resumed and moved up the queue by its priority after submit; a
/// succeeded job renders again with changes (not as it was), as a plain
/// client of farm.proto sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_is_paused_resumed_and_reprioritised_and_a_success_rendered_again() {
    let dir = tempfile::tempdir().unwrap();
    let (url, stop, server) = start(dir.path()).await;
    let mut farm = pb::farm_client::FarmClient::connect(url.clone()).await.unwrap();
    let mut workers = pb::workers_client::WorkersClient::connect(url).await.unwrap();
    let me = workers.register(pb::RegisterRequest { name: "w".into(), device: "cpu".into(), ..Default::default() }).await.unwrap().into_inner().worker_id;
    let (first, second) = (submit(&mut farm, 2).await, submit(&mut farm, 1).await);
    let update = |id: &str, paused: Option<bool>, priority: Option<i32>| pb::UpdateCollectionRequest { collection_id: id.into(), paused, priority };
    let collection_of = |lease: &pb::LeaseResponse| lease.job.as_ref().map(|j| j.collection_id.clone());
    let lease_one = |workers: &mut pb::workers_client::WorkersClient<tonic::transport::Channel>| {
        let r = pb::LeaseRequest { worker_id: me.clone(), free_memory_bytes: 0 };
        let mut w = workers.clone();
        async move { w.lease(r).await.unwrap().into_inner() }
    };
    let finish = |lease: &pb::LeaseResponse| {
        let job = lease.job.clone().unwrap();
        // The output a worker would have written, where the farm's storage is.
        let folder = dir.path().join(format!("data/storage/collections/{}/jobs/{}/attempt-{}", job.collection_id, job.job_id, lease.attempt));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("output.png"), b"png").unwrap();
        pb::CompleteRequest { worker_id: me.clone(), job_id: job.job_id, fencing_token: lease.fencing_token, output_name: "output.png".into(), progress: None }
    };

    let paused = farm.update_collection(update(&first, Some(true), None)).await.unwrap().into_inner();
    assert!(paused.paused && paused.state == pb::CollectionState::Paused as i32, "{paused:?}");
    let lease = lease_one(&mut workers).await;
    assert_eq!(collection_of(&lease), Some(second.clone()), "the older collection is paused: the newer one's job goes first");
    workers.complete(finish(&lease)).await.unwrap();
    assert!(lease_one(&mut workers).await.job.is_none(), "only the paused collection's jobs are left, and they wait");

    let third = submit(&mut farm, 1).await;
    let resumed = farm.update_collection(update(&first, Some(false), None)).await.unwrap().into_inner();
    assert!(!resumed.paused && resumed.state == pb::CollectionState::Queued as i32, "{resumed:?}");
    let raised = farm.update_collection(update(&third, None, Some(5))).await.unwrap().into_inner();
    assert_eq!(raised.priority, 5);
    let lease = lease_one(&mut workers).await;
    assert_eq!(collection_of(&lease), Some(third.clone()), "raised after submit, the newest collection goes first");
    workers.complete(finish(&lease)).await.unwrap();
    let lease = lease_one(&mut workers).await;
    assert_eq!(collection_of(&lease), Some(first.clone()), "resumed");
    assert_eq!(farm.update_collection(update("no-such", Some(true), None)).await.unwrap_err().code(), tonic::Code::NotFound);

    // A success is rendered again only with changes.
    let done = farm.get_collection(pb::CollectionRef { collection_id: third.clone() }).await.unwrap().into_inner().jobs[0].clone();
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    let again = |changes: &str| pb::RetryJobRequest { job_id: done.job_id.clone(), changes_json: changes.into() };
    let e = farm.retry_job(again("")).await.unwrap_err();
    assert!(e.code() == tonic::Code::FailedPrecondition && e.message().contains("change a parameter"), "{e:?}");
    let queued = farm.retry_job(again(r#"{"iters": 2}"#)).await.unwrap().into_inner();
    assert_eq!((queued.state, queued.output_key.as_str()), (pb::JobState::Queued as i32, ""), "{queued:?}");
    workers.complete(finish(&lease)).await.unwrap();
    let rerun = lease_one(&mut workers).await;
    let spec = rerun.job.clone().unwrap();
    assert_eq!((spec.job_id.as_str(), rerun.attempt), (done.job_id.as_str(), 2), "a new attempt beside the first");
    assert!(spec.params_json.contains(r#""iters":2"#), "{}", spec.params_json);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
