//! The worker daemon. It pins one device, then loops: lease a job, render
//! it with the engine's [`stylefarm_engine::Session`], checkpoint into
//! storage under its attempt's prefix (`…/attempt-<n>/`), heartbeat
//! progress, and complete. A job that comes with a checkpoint from an earlier
//! attempt resumes from it. When `shutdown` is cancelled (SIGTERM in the
//! binary, Ctrl-C in `farmctl up`) it checkpoints at once, gives the lease
//! back and returns.
//!
//! - [`run`]: registration and the lease loop (this file);
//! - `job`: one attempt at one job (its modules: the lease, the session's
//!   hooks doing the I/O, failures and whose fault they are);
//! - `name`: the name an unnamed worker takes (unique on its host, stable
//!   across restarts).
//!
//! The render runs on a blocking thread inside the worker's own rayon pool
//! (so several workers in one process each keep their share of the cores);
//! storage and RPC calls from it go through the runtime's handle. A separate
//! task heartbeats on a timer, so a slow iteration never lets the lease lapse.

mod job;
mod name;

pub use name::{default_name, DefaultName};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use stylefarm_engine::{Device, VggWeights};
use stylefarm_proto as pb;
use stylefarm_proto::labels::{self, Labels};
use stylefarm_proto::workers_client::WorkersClient;
use stylefarm_shared::backoff::Backoff;
use stylefarm_shared::client::{Bearer, ClientError, ClientSecurity, Failover};
use stylefarm_shared::layout::FARM_MARKER;
use stylefarm_shared::storage::{StorageError, Store};
use stylefarm_shared::weights;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::Code;

/// Everything a worker is told at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The farm's coordinators, e.g. `http://127.0.0.1:50051`: one, or
    /// several sharing one PostgreSQL database (calls go to one at a time
    /// and move to the next when it cannot be reached).
    pub coordinators: Vec<String>,
    /// `cpu` or `cuda:N`: the one device this worker renders on.
    pub device: String,
    /// Shared storage; `None` takes what the coordinator announces.
    pub storage: Option<String>,
    /// A name for logs and status (the coordinator adds a unique suffix).
    pub name: String,
    /// Labels `KEY=VALUE` (`--label`), beside the device's own.
    pub labels: Vec<String>,
    /// Engine threads (`None`: all cores).
    pub threads: Option<usize>,
    /// VGG-19 weights file (`None`: `$STYLEFARM_WEIGHTS` or the cache).
    pub weights: Option<PathBuf>,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Token and TLS settings for reaching the coordinator.
    pub security: ClientSecurity,
}

/// Why a worker could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Weights(#[from] weights::WeightsError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Metrics(#[from] stylefarm_shared::telemetry::MetricsError),
    #[error("device {device}: {reason}")]
    Device { device: String, reason: String },
    #[error("storage {location} is not this farm's storage ({reason}); give farm-worker the coordinator's --storage")]
    WrongStorage { location: String, reason: String },
    #[error("the coordinator refused registration: {0}")]
    Registration(String),
    #[error("cannot start the engine's threads: {0}")]
    Threads(String),
    #[error("the coordinator no longer knows this worker ({0}); restart it to register again")]
    Forgotten(String),
}

type Client = WorkersClient<InterceptedService<Failover, Bearer>>;

/// What the worker knows for its whole life.
struct Worker {
    client: Client,
    worker_id: String,
    store: Store,
    heartbeat: Duration,
    weights: VggWeights,
    device: Device,
    /// `cpu` or `cuda:N`, the metrics' label.
    device_label: String,
    pool: rayon::ThreadPool,
    shutdown: CancellationToken,
    /// The job this worker gave back last because it was preempted, and
    /// why: the next attempt's log says what it was freed from.
    preempted: std::sync::Mutex<Option<String>>,
}

/// The labels a worker registers: its own (`--label`), over what it sets
/// itself: `device=cpu|cuda` and, on the CPU, `model=` the CPU's model.
fn labels(own: &[String], device: &str) -> Result<Vec<String>, Error> {
    let kind = if device == "cpu" { "cpu" } else { "cuda" };
    let mut set = vec![format!("device={kind}")];
    if let Some(model) = (kind == "cpu").then(stylefarm_shared::host::cpu_model).flatten() {
        set.push(format!("model={}", labels::model_value(&model)));
    }
    let own = Labels::parse(own).map_err(Error::Registration)?;
    let set = Labels::parse(&set).map_err(Error::Registration)?;
    Ok(own.over(set).iter().map(str::to_string).collect())
}

/// Registers with the coordinator (waiting for it if it is not up yet) and
/// renders leased jobs until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    if let Some(addr) = config.metrics_listen {
        stylefarm_shared::telemetry::serve_metrics(addr)?;
    }
    let device = stylefarm_shared::device::open(&config.device).map_err(|e| Error::Device { device: config.device.clone(), reason: e.to_string() })?;
    let weights = weights::load(&weights::weights_path(config.weights.as_deref()), &device)?;
    let pool = engine_pool(config.threads)?;

    let bearer = config.security.bearer()?;
    let coordinators = Failover::new(&config.security, &config.coordinators)?;
    let client = WorkersClient::with_interceptor(coordinators.clone(), bearer).max_decoding_message_size(stylefarm_shared::client::MAX_WORKER_MESSAGE_BYTES);
    let request = pb::RegisterRequest {
        name: config.name.clone(),
        device: config.device.clone(),
        device_name: format!("{device:?}"),
        memory_bytes: stylefarm_shared::device::usable_memory(&device).unwrap_or(0),
        capabilities: vec!["adam".into(), "lbfgs".into()],
        labels: labels(&config.labels, &config.device)?,
    };
    // Waits for a coordinator that is not up yet (each failed try moves
    // on to the next one given), and for a predecessor of the same name to
    // count as gone (a restart right after a crash), at most
    // NAME_PATIENCE: a live worker of that name keeps it.
    let mut backoff = Backoff::default();
    let name_patience = tokio::time::Instant::now() + NAME_PATIENCE;
    let registration = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = backoff.retry(None, || {
            let (mut c, r) = (client.clone(), request.clone());
            async move { c.register(r).await }
        }, |s| s.code() == Code::Unavailable || (s.code() == Code::AlreadyExists && tokio::time::Instant::now() < name_patience), |s, delay| {
            match s.code() {
                Code::AlreadyExists => tracing::warn!("{}; retrying in {delay:?}", s.message()),
                _ => tracing::warn!("coordinator not reachable ({}); retrying in {delay:?} at {}", s.message(), coordinators.current_url()),
            }
        }) => {
            r.map_err(|s| Error::Registration(s.message().to_string()))?.into_inner()
        }
    };
    let storage = config.storage.clone().unwrap_or(registration.storage_url.clone());
    let store = Store::open(&storage)?;
    check_storage(&store, &registration.farm_id).await?;
    tracing::info!(worker = %registration.worker_id, name = %config.name, device = %config.device, memory = %request.memory_bytes, %storage, "registered");
    let ctx = Arc::new(Worker {
        client,
        worker_id: registration.worker_id,
        store,
        heartbeat: Duration::from_secs(registration.heartbeat_seconds.max(1) as u64),
        weights,
        device,
        device_label: config.device.clone(),
        pool,
        shutdown: shutdown.clone(),
        preempted: Default::default(),
    });
    let ended = lease_loop(ctx.clone()).await;
    if ended.is_ok() {
        deregister(&ctx).await;
    }
    tracing::info!(worker = %ctx.worker_id, "stopped");
    ended
}

/// Says goodbye, so the farm shows this worker STOPPED rather than lost;
/// a coordinator that does not answer in a few seconds is not waited for.
async fn deregister(ctx: &Worker) {
    let mut client = ctx.client.clone();
    let request = pb::DeregisterRequest {
        worker_id: ctx.worker_id.clone(),
    };
    match tokio::time::timeout(Duration::from_secs(5), client.deregister(request)).await {
        Ok(Ok(_)) => {}
        Ok(Err(s)) => tracing::warn!(
            "deregistering failed ({}); the farm will show this worker lost",
            s.message()
        ),
        Err(_) => tracing::warn!(
            "the coordinator did not answer the goodbye; the farm will show this worker lost"
        ),
    }
}

/// How long a worker waits for a live worker of its name to go before it
/// gives up: longer than the default lease (15 s), after which a crashed
/// predecessor counts as gone.
const NAME_PATIENCE: Duration = Duration::from_secs(30);

/// Refuses to take jobs from storage that is not the farm's (a wrong
/// `--storage`: every job's inputs would be missing) or that takes no
/// writes (every checkpoint and output would fail).
async fn check_storage(store: &Store, farm_id: &str) -> Result<(), Error> {
    let wrong = |reason: String| Error::WrongStorage { location: store.location().to_string(), reason };
    let marker = store.get(FARM_MARKER).await.map_err(|_| wrong(format!("it has no {FARM_MARKER}")))?;
    if String::from_utf8_lossy(&marker).trim() != farm_id {
        return Err(wrong(format!("its {FARM_MARKER} names another farm")));
    }
    store.check_writable().await.map_err(|e| wrong(format!("it takes no writes: {e}")))
}


/// The worker's own rayon pool: the engine's parallel loops run in it, so
/// workers sharing a process (`farmctl up`) each keep their `threads`.
fn engine_pool(threads: Option<usize>) -> Result<rayon::ThreadPool, Error> {
    let mut pool = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("engine-{i}"));
    if let Some(n) = threads {
        pool = pool.num_threads(n.max(1));
    }
    pool.build().map_err(|e| Error::Threads(e.to_string()))
}

/// Leases and renders one job at a time until shutdown, or until the
/// coordinator says it no longer knows this worker (replaced by a newer
/// registration under its name, or forgotten).
async fn lease_loop(ctx: Arc<Worker>) -> Result<(), Error> {
    let mut backoff = Backoff::default();
    while !ctx.shutdown.is_cancelled() {
        let request = pb::LeaseRequest { worker_id: ctx.worker_id.clone(), free_memory_bytes: 0 };
        let mut client = ctx.client.clone();
        let leased = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            r = client.lease(request) => r,
        };
        match leased {
            Ok(r) => {
                backoff.reset();
                let r = r.into_inner();
                let Some(job) = r.job else {
                    tokio::select! {
                        _ = ctx.shutdown.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                    }
                    continue;
                };
                let span = tracing::info_span!("attempt", job = %job.job_id, token = r.fencing_token, attempt = r.attempt);
                let (ctx, token, rt) = (ctx.clone(), r.fencing_token, tokio::runtime::Handle::current());
                // The engine's loops run in the worker's pool; its threads
                // are not the runtime's, so the attempt gets the handle (and
                // enters its span there, where its log lines are written).
                let attempt = tokio::task::spawn_blocking(move || {
                    ctx.pool.install(|| {
                        span.in_scope(|| {
                            // Both attempts' logs tell of a preemption.
                            if let Some(freed) = ctx.preempted.lock().ok().and_then(|mut p| p.take()) {
                                tracing::info!(%freed, "this worker was freed for this job by a preemption");
                            }
                            job::run(&ctx, &rt, job, token)
                        })
                    })
                });
                if let Err(e) = attempt.await {
                    tracing::error!("the attempt's thread ended abnormally: {e}");
                }
            }
            Err(s) if s.code() == Code::NotFound => {
                return Err(Error::Forgotten(s.message().to_string()))
            }
            Err(s) => {
                let delay = backoff.next_delay();
                tracing::warn!("lease failed ({}); retrying in {delay:?}", s.message());
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_worker_labels_its_device_and_its_own_labels_win() {
        let labels = super::labels(&["pool=a100".into(), "device=gpu-box".into()], "cpu").unwrap();
        assert!(labels.contains(&"pool=a100".to_string()) && labels.contains(&"device=gpu-box".to_string()), "{labels:?}");
        assert!(!labels.contains(&"device=cpu".to_string()), "its own device= wins: {labels:?}");
        let labels = super::labels(&[], "cuda:1").unwrap();
        assert_eq!(labels, ["device=cuda"], "no CPU model on a GPU worker");
        assert!(super::labels(&["pool".into()], "cpu").unwrap_err().to_string().contains("KEY=VALUE"));
    }
}
