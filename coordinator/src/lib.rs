//! The Stylefarm coordinator: turns collections into jobs, leases them to
//! workers under fencing tokens, requeues what lapses, and keeps it all in
//! an embedded SQLite database so a restart loses nothing.
//!
//! - [`run`]: opens the database and storage and serves until shutdown
//!   (this file; the binary's `main` only parses flags and binds);
//! - [`config`]: everything the coordinator is told at start;
//! - [`context`]: what every handler shares;
//! - [`auth`]: which bearer token may call which service, who owns what,
//!   and the one visibility check;
//! - [`limits`]: what a request may hold, one constant each, as
//!   `farm.proto` states them;
//! - [`admission`]: how many expensive things one client and all may
//!   have at once, and the blocking threads CPU-heavy steps run on;
//! - [`conn`]: connections on both ports capped per address and in all,
//!   and closed when silent;
//! - [`machine`]: the job state machine, one pure function;
//! - [`schedule`]: who gets a free worker and which running job to take
//!   back for whom (fair shares, priorities, quotas), pure functions;
//!   [`preemption`]: the pass that applies the second;
//! - [`paths`]: the storage layout, the one place a key is formed;
//! - [`db`]: the schema and every state change, one savepoint each;
//! - [`state`]: the one thread that owns the writing connection (group
//!   commit) and announces every change, and the read-only connections;
//! - [`gauges`]: the farm's gauges on `/metrics` (jobs by state, the
//!   queue by the device memory it needs), refreshed by the sweep;
//! - [`hub`]: one merger of those changes per watched collection, which
//!   every `Watch` of it follows;
//! - [`status`]: every failure mapped to a deliberate gRPC status (and its
//!   HTTP twin);
//! - [`command`]: every change to the farm's state, by name — the one list
//!   of what the writer thread runs;
//! - [`service`]: the `Farm` service, which hands each call to its
//!   handler: [`collections`], [`jobs`], [`fleet`] (free functions over
//!   the one context, which validate and send `state` a command) and
//!   [`submit`] (limits first, images decoded off the runtime);
//! - [`workers`]: the `Workers` handlers, which check everything a worker
//!   reports;
//! - [`watch`]: `Watch` on its own route, each message encoded once for
//!   all of a collection's watchers;
//! - [`deleter`]: a collection's objects removed from storage when it is
//!   deleted, and deletions a restart interrupted finished; [`usage`]:
//!   the bytes each collection stores, measured by listing storage;
//! - [`fleet`]: the operator's actions on workers; [`retry`]: retry with
//!   changed parameters; [`notify`]: a collection's end POSTed, signed, to
//!   its notify_url;
//! - [`web`]: the dashboard, an HTTP port beside the gRPC one that calls
//!   the same handlers and follows the same mergers.
pub mod admission;
pub mod auth;
pub mod checks;
pub mod clock;
pub mod collections;
pub mod command;
pub mod config;
pub mod context;
pub mod conn;
pub mod db;
pub mod deleter;
pub mod fleet;
pub mod gauges;
pub mod hub;
pub mod jobs;
pub mod limits;
pub mod machine;
pub mod notify;
pub mod paging;
pub mod paths;
pub mod preemption;
pub mod retry;
pub mod schedule;
pub mod service;
pub mod state;
pub mod status;
pub mod submit;
pub mod usage;
pub mod watch;
pub mod web;
pub mod workers;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use stylefarm_proto::farm_server::FarmServer;
use stylefarm_proto::workers_server::WorkersServer;
use stylefarm_shared::storage::{StorageError, Store};
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

pub use auth::{Scope, Tokens};

/// The default of `--max-connections`: half the file descriptors this
/// process may open.
pub fn default_max_connections() -> usize {
    conn::Gate::default_total()
}

/// The default of `--work-threads`: one fewer than the cores, at least one.
pub fn default_work_threads() -> usize {
    admission::Work::default_threads()
}
pub use config::{Config, TlsFiles};
pub use service::FarmService;
pub use workers::WorkersService;

use crate::db::Db;
use crate::admission::{Admission, Work};
use crate::context::State;
use crate::state::StateHandle;

/// Why the coordinator could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open database {path}: {source}")]
    Database { path: String, source: crate::db::sql::Error },
    #[error(transparent)]
    InUse(#[from] crate::db::single::LockError),
    #[error("storage {location} does not take writes: {source}")]
    Storage { location: String, source: StorageError },
    #[error("--input-prefix {location}: {source}")]
    InputPrefix { location: String, source: StorageError },
    #[error("--notify-prefix needs --notify-secret (notifications are signed)")]
    NotifySecret,
    #[error("cannot read {path}: {source}")]
    TlsFile { path: PathBuf, source: std::io::Error },
    #[error("TLS configuration: {0}")]
    Tls(tonic::transport::Error),
    #[error(transparent)]
    Metrics(#[from] stylefarm_shared::telemetry::MetricsError),
    #[error("cannot start the state's thread: {0}")]
    Thread(std::io::Error),
    #[error("the listening socket: {0}")]
    Listener(std::io::Error),
    #[error("serving gRPC failed: {0}")]
    Serve(tonic::transport::Error),
    #[error("the dashboard's TLS configuration: {0}")]
    DashboardTls(String),
}

/// Opens the database and storage and serves the `Farm`, `Workers` and
/// health services on `listener` until `shutdown` resolves; then stops
/// accepting, lets calls in flight finish, and returns. Tests start it on
/// port 0 in-process.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
    run_with_dashboard(config, listener, None, shutdown).await
}

/// [`run`], and the web dashboard on `dashboard` when given (over TLS when
/// the coordinator has it): `farm-coordinator --http-listen` and `farmctl
/// up` call this.
pub async fn run_with_dashboard(
    config: Config,
    listener: TcpListener,
    dashboard: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    if let Some(addr) = config.metrics_listen {
        stylefarm_shared::telemetry::serve_metrics(addr)?;
    }
    if !config.notify_prefixes.is_empty() && config.notify_secret.is_none() {
        return Err(Error::NotifySecret);
    }
    let mut config = config;
    if let (None, Some(http)) = (&config.public_url, &dashboard) {
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        config.public_url = http.local_addr().ok().map(|a| format!("{scheme}://{a}"));
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::DataDir { path: config.data_dir.clone(), source })?;
    let target = config.database();
    // Held until this returns: no second coordinator on the same file.
    let _single_writer = match &target {
        crate::db::Target::Sqlite(path) => Some(crate::db::single::SingleWriter::acquire(path)?),
        crate::db::Target::Postgres(_) => None,
    };
    let database_error = |source| Error::Database { path: target.describe(), source };
    // Off the runtime: PostgreSQL's blocking client runs its own.
    let (opening, rules) = (target.clone(), config.rules());
    let (db, graced) = tokio::task::spawn_blocking(move || {
        let mut db = Db::connect(&opening)?;
        // On a shared database the farm's clock is the database's.
        let offset = db.sync_clock()?;
        if offset.abs() > 1.0 {
            tracing::warn!(seconds = offset, "this machine's clock is off the database's; the farm keeps the database's time");
        }
        // The time this coordinator was down is nobody's fault: running
        // leases get a full lease length from now to reach it again.
        let graced = db.grant_grace(&rules)?;
        Ok((db, graced))
    })
    .await
    .map_err(|e| Error::Thread(std::io::Error::other(e)))?
    .map_err(database_error)?;
    if graced > 0 {
        tracing::info!(jobs = graced, "running leases get {} s to reconnect", config.lease_seconds);
    }
    let storage_error = |source| Error::Storage { location: config.storage.clone(), source };
    let store = Store::open(&config.storage).map_err(storage_error)?;
    store.check_writable().await.map_err(storage_error)?;
    let farm_id = farm_id(&store).await.map_err(storage_error)?;
    let mut input_stores = Vec::new();
    for prefix in &config.input_prefixes {
        let store = Store::open(prefix).map_err(|source| Error::InputPrefix { location: prefix.clone(), source })?;
        input_stores.push((prefix.trim_end_matches('/').to_string() + "/", store));
    }
    let owner = StateHandle::start(db, target.clone(), 8192, config.writers).map_err(Error::Thread)?;
    let watchers = Admission::watches(config.max_watchers_per_client, config.max_watchers);
    let submits = Admission::submits(config.max_submits_per_client, config.max_submits);
    let work = Work::new(config.work_threads);
    let hubs = hub::Hubs::new(owner.events.clone());
    let state = Arc::new(State { db: owner, store, farm_id, input_stores, config: config.clone(), watchers, submits, zips: Admission::zips(), work, sheets: Work::new(1), hubs, preempt_now: Default::default() });

    let background = CancellationToken::new();
    tokio::spawn(expire_leases(state.clone(), background.clone()));
    tokio::spawn(notify::run(state.clone(), background.clone()));
    tokio::spawn(deleter::run(state.clone(), background.clone()));
    tokio::spawn(usage::run(state.clone(), background.clone()));
    tokio::spawn(preemption::run(state.clone(), background.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<FarmServer<FarmService>>().await;
    health.set_serving::<WorkersServer<WorkersService>>().await;
    let addr = listener.local_addr().map_err(Error::Listener)?;
    tracing::info!(%addr, storage = %config.storage, "coordinator started");
    let max = config.max_message_bytes;
    // Dead peers (a worker whose network vanished) are noticed by HTTP/2
    // pings, not by a request that never ends.
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    let mutual = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    let read = |p: &PathBuf| std::fs::read(p).map_err(|source| Error::TlsFile { path: p.clone(), source });
    // The certificate and key, read once for the gRPC port and the dashboard.
    let identity = config.tls.as_ref().map(|tls| Ok::<_, Error>((read(&tls.cert)?, read(&tls.key)?))).transpose()?;
    if let (Some(tls), Some((cert, key))) = (&config.tls, &identity) {
        let mut t = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key));
        if let Some(ca) = &tls.client_ca {
            // Users may connect without a client certificate; the Workers
            // service demands one (checked below).
            t = t.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?)).client_auth_optional(true);
        }
        builder = builder.tls_config(t).map_err(Error::Tls)?;
    }
    if config.tokens.disabled() {
        tracing::warn!("no tokens configured: anyone who can reach the port may submit and lease");
    }
    let (user_tokens, worker_tokens) = (config.tokens.clone(), config.tokens.clone());
    let stopping = CancellationToken::new();
    let gate = conn::Gate::new(config.max_connections_per_address, config.max_connections);
    let web = match dashboard {
        Some(http) => {
            let tls = identity.as_ref().map(|(cert, key)| web::tls_config(cert, key).map_err(Error::DashboardTls)).transpose()?;
            Some(tokio::spawn(web::serve(state.clone(), http, tls, gate.clone(), stopping.clone())))
        }
        None => None,
    };
    let shutdown = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.cancel();
        }
    };
    let farm = FarmServer::new(FarmService(state.clone())).max_decoding_message_size(max).max_encoding_message_size(max);
    // Watch has its own route (the contract's path, before the Farm
    // service's): its messages are encoded once for all watchers.
    let watch = watch::Route::new(state.clone(), max);
    let workers = WorkersServer::new(WorkersService(state)).max_decoding_message_size(limits::MAX_WORKER_REQUEST_BYTES);
    let users = move |mut r: Request<()>| {
        let caller = user_tokens.user(&r)?;
        r.extensions_mut().insert(caller);
        Ok(r)
    };
    let routes = tonic::service::Routes::new(health_service)
        .add_service(InterceptedService::new(farm, users.clone()))
        .add_service(InterceptedService::new(workers, move |r: Request<()>| {
            if mutual && r.peer_certs().is_none_or(|c| c.is_empty()) {
                return Err(Status::unauthenticated("workers must present a client certificate signed by the farm's CA"));
            }
            worker_tokens.check(Scope::Worker, &r)?;
            Ok(r)
        }))
        .into_axum_router()
        .route_service(&watch::path(), InterceptedService::new(watch, users));
    let served = builder
        .add_routes(routes.into())
        .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(conn::accept(listener, gate)).map(Ok::<_, std::io::Error>), shutdown)
        .await;
    background.cancel();
    stopping.cancel();
    if let Some(web) = web {
        match tokio::time::timeout(Duration::from_secs(5), web).await {
            Ok(Ok(Err(e))) => tracing::error!("the dashboard: {e}"),
            Err(_) => tracing::warn!("the dashboard's connections did not close within 5 s"),
            _ => {}
        }
    }
    tracing::info!(%addr, "coordinator stopped");
    served.map_err(Error::Serve)
}

/// Puts lapsed leases back in the queue within half a second (on the
/// state's thread, like every write), and keeps the job-count gauges
/// current, until `stop` is cancelled.
async fn expire_leases(state: Arc<State>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let rules = state.config.rules();
        match state.db.run(|reply| command::Command::ExpireLeases { rules, reply }).await {
            Ok(Ok(touched)) if !touched.is_empty() => {
                metrics::counter!("stylefarm_lease_expiries_total").increment(touched.len() as u64);
                tracing::warn!(jobs = touched.len(), "leases lapsed; jobs requeued");
            }
            Ok(Err(e)) => tracing::error!("expiring leases: {e}"),
            _ => {}
        }
        ticks += 1;
        if ticks % 4 == 0 {
            if let Ok(Err(e)) = state.db.read(gauges::refresh).await {
                tracing::warn!("refreshing the gauges: {e}");
            }
        }
    }
}

/// The farm's id, from the marker at the storage root. The first
/// coordinator to start on new storage writes it, only if it is still
/// absent, so coordinators starting together agree on one id; the others
/// read it. A marker that cannot be read stops the start: taken as absent,
/// it would be replaced, and every worker of the farm would then refuse
/// the storage as another farm's.
async fn farm_id(store: &Store) -> Result<String, stylefarm_shared::storage::StorageError> {
    let marker = match store.get_if_exists(paths::FARM_MARKER).await? {
        Some(marker) => marker,
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            if store.put_new(paths::FARM_MARKER, id.clone().into_bytes()).await? {
                return Ok(id);
            }
            store.get(paths::FARM_MARKER).await?
        }
    };
    Ok(String::from_utf8_lossy(&marker).trim().to_string())
}

#[cfg(test)]
mod farm_id_tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn coordinators_starting_together_on_new_storage_agree_on_the_farm() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let stores: Vec<Store> = (0..4).map(|_| Store::open(&dir.path().to_string_lossy()).unwrap()).collect();
            let together = tokio::join!(farm_id(&stores[0]), farm_id(&stores[1]), farm_id(&stores[2]), farm_id(&stores[3]));
            let ids: std::collections::BTreeSet<String> = [together.0, together.1, together.2, together.3].into_iter().map(Result::unwrap).collect();
            assert_eq!(ids.len(), 1, "{ids:?}");
            let marker = std::fs::read_to_string(dir.path().join(paths::FARM_MARKER)).unwrap();
            assert_eq!(ids.first(), Some(&marker));
        }
    }
}
