//! The coordinator as a library: started on port 0 inside the test's own
//! runtime, called over gRPC, and stopped by its shutdown future.

use std::time::Duration;

use stylefarm_coordinator::{Config, Tokens};
use stylefarm_proto as pb;
use stylefarm_shared::image_io::ImageLimits;

fn config(dir: &std::path::Path) -> Config {
    Config {
        data_dir: dir.join("data"),
        storage: dir.join("storage").to_string_lossy().into_owned(),
        lease_seconds: 3,
        heartbeat_seconds: 1,
        max_failures: 3,
        limits: ImageLimits::default(),
        default_checkpoint_every: 20,
        max_message_bytes: 1 << 20,
        max_jobs: 100,
        metrics_listen: None,
        tokens: Tokens::default(),
        tls: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_port_zero_and_stops_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(stylefarm_coordinator::run(config(dir.path()), listener, async move {
        let _ = stopped.await;
    }));

    let mut farm = pb::farm_client::FarmClient::connect(url.clone()).await.unwrap();
    let listed = farm.list_collections(pb::ListCollectionsRequest {}).await.unwrap().into_inner();
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
