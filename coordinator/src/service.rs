//! The gRPC services. Handlers validate the request, then make one call on
//! the database (behind a mutex: SQLite serialises writers anyway) and map
//! each failure to a deliberate status: bad input → INVALID_ARGUMENT, an
//! unknown id → NOT_FOUND, a stale lease → FAILED_PRECONDITION, storage or
//! database trouble → INTERNAL/UNAVAILABLE.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use stylefarm_engine::RenderParams;
use stylefarm_proto as pb;
use stylefarm_proto::farm_server::Farm;
use stylefarm_proto::workers_server::Workers;
use stylefarm_shared::image_io::{decode_rgb, ImageLimits};
use stylefarm_shared::size::{fit_max_side, MAX_RENDER_SIDE};
use stylefarm_shared::storage::Store;
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::Tokens;
use crate::db::{Db, LeaseError, NewJob};

/// Image names become file names in `farmctl fetch`: letters, digits,
/// `.`, `_` and `-` only, at most 100, not starting with a dot.
fn check_name(name: &str, role: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!("{role} name {name:?} must be 1-100 of A-Z a-z 0-9 . _ - and not start with a dot")))
    }
}

/// Everything the coordinator is told at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `farm.db`.
    pub data_dir: PathBuf,
    /// Storage URL or folder; default `<data-dir>/storage`.
    pub storage: String,
    pub lease_seconds: u32,
    pub heartbeat_seconds: u32,
    pub max_failures: u32,
    pub limits: ImageLimits,
    pub default_checkpoint_every: u32,
    /// Largest gRPC message accepted (uploads carry images).
    pub max_message_bytes: usize,
    /// Most jobs one collection may create.
    pub max_jobs: usize,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Bearer tokens by scope; none = no authentication.
    pub tokens: Tokens,
    /// TLS: certificate and key, and the CA that signs worker client
    /// certificates (mutual TLS for the Workers service).
    pub tls: Option<TlsFiles>,
}

impl Config {
    /// The lease a worker holds without a heartbeat.
    pub const LEASE_SECONDS: u32 = 15;
    pub const HEARTBEAT_SECONDS: u32 = 3;
    pub const MAX_FAILURES: u32 = 3;
    pub const CHECKPOINT_EVERY: u32 = 20;
    pub const MAX_REQUEST_MB: usize = 256;
    pub const MAX_JOBS: usize = 10_000;

    /// The defaults `farm-coordinator` starts with (no tokens, no TLS, no
    /// metrics; storage in `data_dir/storage`): one place for them, used by
    /// its flags, `farmctl up` and tests.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            storage: data_dir.join("storage").to_string_lossy().into_owned(),
            data_dir,
            lease_seconds: Self::LEASE_SECONDS,
            heartbeat_seconds: Self::HEARTBEAT_SECONDS,
            max_failures: Self::MAX_FAILURES,
            limits: ImageLimits::default(),
            default_checkpoint_every: Self::CHECKPOINT_EVERY,
            max_message_bytes: Self::MAX_REQUEST_MB << 20,
            max_jobs: Self::MAX_JOBS,
            metrics_listen: None,
            tokens: Tokens::default(),
            tls: None,
        }
    }
}

/// The coordinator's certificate and key, and the CA of worker client
/// certificates (mutual TLS).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// What every handler shares.
pub(crate) struct State {
    pub(crate) db: Mutex<Db>,
    pub(crate) store: Store,
    pub(crate) config: Config,
    /// Collection ids whose jobs changed; `Watch` streams listen.
    pub(crate) changes: broadcast::Sender<String>,
}

impl State {
    fn db(&self) -> Result<std::sync::MutexGuard<'_, Db>, Status> {
        self.db.lock().map_err(|_| Status::internal("database lock poisoned"))
    }

    pub(crate) fn changed(&self, collection: &str) {
        let _ = self.changes.send(collection.to_string());
    }
}

fn db_err(e: rusqlite::Error) -> Status {
    Status::internal(format!("database: {e}"))
}

fn lease_err(e: LeaseError) -> Status {
    match e {
        LeaseError::NoJob(j) => Status::not_found(format!("no job {j}")),
        e @ LeaseError::Stale { .. } => Status::failed_precondition(e.to_string()),
        LeaseError::Db(e) => db_err(e),
    }
}

/// The `Farm` service (users).
#[derive(Clone)]
pub struct FarmService(pub(crate) Arc<State>);
/// The `Workers` service (workers).
#[derive(Clone)]
pub struct WorkersService(pub(crate) Arc<State>);

/// An input validated and ready to store.
struct Input {
    name: String,
    key: String,
    bytes: Vec<u8>,
    size: (u32, u32),
}

impl FarmService {
    async fn input(&self, image: &pb::InputImage, role: &str) -> Result<Input, Status> {
        let name = if image.name.is_empty() { role.to_string() } else { image.name.clone() };
        check_name(&name, role)?;
        let bytes = match &image.source {
            Some(pb::input_image::Source::Data(d)) => d.clone(),
            Some(pb::input_image::Source::Url(url)) => {
                let (dir, file) = url.rsplit_once('/').ok_or_else(|| Status::invalid_argument(format!("{role} {name}: `{url}` is not a URL")))?;
                let store = Store::open(dir).map_err(|e| Status::invalid_argument(format!("{role} {name}: {e}")))?;
                store.get(file).await.map_err(|e| Status::invalid_argument(format!("{role} {name}: {e}")))?.to_vec()
            }
            None => return Err(Status::invalid_argument(format!("{role} {name} has neither data nor url"))),
        };
        let img = decode_rgb(&bytes, &name, self.0.config.limits).map_err(|e| Status::invalid_argument(format!("{role} {e}")))?;
        let key = format!("inputs/{:x}", Sha256::digest(&bytes));
        Ok(Input { name, key, bytes, size: img.dimensions() })
    }

    fn snapshot(&self, id: &str) -> Result<pb::Collection, Status> {
        self.0.db()?.collection(id).map_err(db_err)?.ok_or_else(|| Status::not_found(format!("no collection {id}")))
    }
}

fn ended(c: &pb::Collection) -> bool {
    c.jobs.iter().all(|j| {
        matches!(pb::JobState::try_from(j.state), Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled))
    })
}

#[tonic::async_trait]
impl Farm for FarmService {
    async fn submit(&self, request: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        let r = request.into_inner();
        if r.contents.is_empty() || r.styles.is_empty() {
            return Err(Status::invalid_argument("a collection needs at least one content and one style image"));
        }
        let variants_json = if r.variants_json.is_empty() { vec!["{}".to_string()] } else { r.variants_json.clone() };
        // Blended: each job reads every style; otherwise one style a job.
        let (style_columns, styles_per_job) = if r.blend_styles { (1, r.styles.len()) } else { (r.styles.len(), 1) };
        let jobs_total = r.contents.len() * style_columns * variants_json.len();
        if jobs_total > self.0.config.max_jobs {
            return Err(Status::invalid_argument(format!("{jobs_total} jobs is more than the limit of {}", self.0.config.max_jobs)));
        }
        // Parameters first: cheap, and the most common mistake.
        let mut variants = Vec::new();
        for (i, v) in variants_json.iter().enumerate() {
            let params: RenderParams =
                serde_json::from_str(v).map_err(|e| Status::invalid_argument(format!("variant {i}: not valid render parameters: {e}")))?;
            params.validate(styles_per_job).map_err(|e| Status::invalid_argument(format!("variant {i}: {e}")))?;
            variants.push(params);
        }
        if r.max_side == 0 && (r.width == 0 || r.height == 0 || r.width > MAX_RENDER_SIDE || r.height > MAX_RENDER_SIDE) {
            return Err(Status::invalid_argument(format!(
                "size {}x{} is not a render size (1..{MAX_RENDER_SIDE} a side), and no max_side was given",
                r.width, r.height
            )));
        }
        if r.max_side > MAX_RENDER_SIDE {
            return Err(Status::invalid_argument(format!("max_side {} is over {MAX_RENDER_SIDE}", r.max_side)));
        }
        let mut contents = Vec::new();
        for c in &r.contents {
            contents.push(self.input(c, "content").await?);
        }
        let mut styles = Vec::new();
        for s in &r.styles {
            styles.push(self.input(s, "style").await?);
        }
        // Everything is valid: store the inputs (content-addressed, so a
        // retry rewrites the same objects), then create the jobs at once.
        let mut stored = BTreeMap::new();
        for input in contents.iter().chain(&styles) {
            if stored.insert(input.key.clone(), ()).is_none() {
                self.0.store.put(&input.key, input.bytes.clone()).await.map_err(|e| Status::unavailable(e.to_string()))?;
            }
        }
        // A column of the collection: one style, or (blended) all of them.
        let columns: Vec<(String, Vec<String>)> = if r.blend_styles {
            vec![(styles.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join("+"), styles.iter().map(|s| s.key.clone()).collect())]
        } else {
            styles.iter().map(|s| (s.name.clone(), vec![s.key.clone()])).collect()
        };
        let collection_id = uuid::Uuid::new_v4().to_string();
        let checkpoint_every = if r.checkpoint_every == 0 { self.0.config.default_checkpoint_every } else { r.checkpoint_every };
        let mut jobs = Vec::new();
        for (ci, c) in contents.iter().enumerate() {
            let (width, height) = if r.max_side > 0 {
                fit_max_side(c.size, r.max_side).map_err(|e| Status::invalid_argument(e.to_string()))?
            } else {
                (r.width, r.height)
            };
            for (si, (style_name, style_keys)) in columns.iter().enumerate() {
                for (vi, params) in variants.iter().enumerate() {
                    jobs.push(NewJob {
                        id: uuid::Uuid::new_v4().to_string(),
                        content_index: ci as u32,
                        style_index: si as u32,
                        variant_index: vi as u32,
                        content_name: c.name.clone(),
                        style_name: style_name.clone(),
                        content_key: c.key.clone(),
                        style_keys: style_keys.clone(),
                        params_json: serde_json::to_string(params).map_err(|e| Status::internal(e.to_string()))?,
                        width,
                        height,
                        iterations: params.iterations as u32,
                        checkpoint_every,
                        snapshot_every: r.snapshot_every,
                    });
                }
            }
        }
        let name = if r.name.is_empty() { "collection".to_string() } else { r.name.clone() };
        let shape = (contents.len() as u32, columns.len() as u32, variants.len() as u32);
        self.0.db()?.create_collection(&collection_id, &name, r.priority, shape, &jobs).map_err(db_err)?;
        self.0.changed(&collection_id);
        Ok(Response::new(pb::SubmitResponse { collection_id, jobs: jobs.len() as u32 }))
    }

    async fn get_collection(&self, request: Request<pb::CollectionRef>) -> Result<Response<pb::Collection>, Status> {
        Ok(Response::new(self.snapshot(&request.into_inner().collection_id)?))
    }

    async fn list_collections(&self, _: Request<pb::ListCollectionsRequest>) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        let ids = self.0.db()?.collection_ids().map_err(db_err)?;
        let collections = ids.iter().map(|id| self.snapshot(id)).collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListCollectionsResponse { collections }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Collection, Status>> + Send>>;

    async fn watch(&self, request: Request<pb::CollectionRef>) -> Result<Response<Self::WatchStream>, Status> {
        let id = request.into_inner().collection_id;
        let first = self.snapshot(&id)?;
        let mut changes = self.0.changes.subscribe();
        let this = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut current = first;
            loop {
                let done = ended(&current);
                if tx.send(Ok(current)).await.is_err() || done {
                    return;
                }
                // The next change of this collection, or a periodic refresh.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    loop {
                        match changes.recv().await {
                            Ok(c) if c == id => return,
                            Ok(_) => continue,
                            Err(broadcast::error::RecvError::Lagged(_)) => return,
                            Err(broadcast::error::RecvError::Closed) => return,
                        }
                    }
                })
                .await;
                current = match this.snapshot(&id) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn cancel(&self, request: Request<pb::CollectionRef>) -> Result<Response<pb::Collection>, Status> {
        let id = request.into_inner().collection_id;
        self.snapshot(&id)?;
        self.0.db()?.cancel(&id).map_err(db_err)?;
        self.0.changed(&id);
        Ok(Response::new(self.snapshot(&id)?))
    }

    async fn fetch(&self, request: Request<pb::FetchRequest>) -> Result<Response<pb::FetchResponse>, Status> {
        let r = request.into_inner();
        let prefix = format!("collections/{}/", r.collection_id);
        let safe = r.key.starts_with(&prefix) && !r.key.split('/').any(|p| p.is_empty() || p == "." || p == "..") && !r.key.contains('\0');
        if !safe {
            return Err(Status::invalid_argument(format!("key `{}` is not inside collection {}", r.key, r.collection_id)));
        }
        self.snapshot(&r.collection_id)?;
        let data = self.0.store.get(&r.key).await.map_err(|e| Status::not_found(e.to_string()))?;
        Ok(Response::new(pb::FetchResponse { data: data.to_vec() }))
    }
}

#[tonic::async_trait]
impl Workers for WorkersService {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = request.into_inner();
        if !(r.device == "cpu" || r.device.strip_prefix("cuda:").is_some_and(|n| n.parse::<u32>().is_ok())) {
            return Err(Status::invalid_argument(format!("device `{}` is not cpu or cuda:N", r.device)));
        }
        let id = format!("{}-{}", if r.name.is_empty() { "worker" } else { &r.name }, &uuid::Uuid::new_v4().to_string()[..8]);
        self.0.db()?.register_worker(&id, &r).map_err(db_err)?;
        let c = &self.0.config;
        Ok(Response::new(pb::RegisterResponse {
            worker_id: id,
            storage_url: self.0.store.location().to_string(),
            heartbeat_seconds: c.heartbeat_seconds,
            lease_seconds: c.lease_seconds,
        }))
    }

    async fn lease(&self, request: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        let r = request.into_inner();
        let leased = self.0.db()?.lease(&r.worker_id, self.0.config.lease_seconds as f64).map_err(db_err)?;
        Ok(Response::new(match leased {
            Some((job, token, attempt, collection)) => {
                metrics::counter!("stylefarm_leases_total").increment(1);
                tracing::info!(job = %job.job_id, worker = %r.worker_id, token, attempt, "leased");
                self.0.changed(&collection);
                pb::LeaseResponse { job: Some(job), fencing_token: token, attempt }
            }
            None => pb::LeaseResponse::default(),
        }))
    }

    async fn heartbeat(&self, request: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = request.into_inner();
        let (cancelled, collection) = self.0.db()?.heartbeat(&r, self.0.config.lease_seconds as f64).map_err(lease_err)?;
        self.0.changed(&collection);
        Ok(Response::new(pb::HeartbeatResponse { cancelled }))
    }

    async fn complete(&self, request: Request<pb::CompleteRequest>) -> Result<Response<pb::CompleteResponse>, Status> {
        let r = request.into_inner();
        let collection = self.0.db()?.complete(&r).map_err(|e| {
            tracing::warn!(job = %r.job_id, worker = %r.worker_id, token = r.fencing_token, "completion refused: {e}");
            lease_err(e)
        })?;
        metrics::counter!("stylefarm_jobs_completed_total").increment(1);
        tracing::info!(job = %r.job_id, worker = %r.worker_id, "completed");
        self.0.changed(&collection);
        Ok(Response::new(pb::CompleteResponse {}))
    }

    async fn fail(&self, request: Request<pb::FailRequest>) -> Result<Response<pb::FailResponse>, Status> {
        let r = request.into_inner();
        let collection = self.0.db()?.fail(&r, self.0.config.max_failures).map_err(lease_err)?;
        let kind = pb::FailureKind::try_from(r.kind).map(|k| k.as_str_name()).unwrap_or("UNKNOWN");
        metrics::counter!("stylefarm_job_failures_total", "kind" => kind).increment(1);
        tracing::warn!(job = %r.job_id, worker = %r.worker_id, kind, "attempt failed: {}", r.message);
        self.0.changed(&collection);
        Ok(Response::new(pb::FailResponse {}))
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let r = request.into_inner();
        let collection = self.0.db()?.release(&r).map_err(lease_err)?;
        metrics::counter!("stylefarm_releases_total").increment(1);
        tracing::info!(job = %r.job_id, worker = %r.worker_id, iteration = r.checkpoint_iteration, "released");
        self.0.changed(&collection);
        Ok(Response::new(pb::ReleaseResponse {}))
    }
}

