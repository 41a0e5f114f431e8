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
