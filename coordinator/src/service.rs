//! The gRPC services. Handlers check who is calling and validate the
//! request, then hand one command to the state's owner
//! ([`crate::state::StateHandle`]: writes are group-committed on its
//! thread, reads run on read-only connections) and map each failure to a
//! deliberate status:
//! bad input → INVALID_ARGUMENT, an unknown id or another user's collection
//! → NOT_FOUND, another worker's lease → PERMISSION_DENIED, a stale lease or
//! a state that does not allow the call → FAILED_PRECONDITION, storage or
//! database trouble → UNAVAILABLE/INTERNAL with the details in the log, not
//! in the reply (they hold the server's paths).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use stylefarm_proto as pb;
use stylefarm_proto::farm_server::Farm;
use stylefarm_proto::workers_server::Workers;
use stylefarm_shared::image_io::ImageLimits;
use stylefarm_shared::storage::Store;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::admission::{Admission, Work};
use crate::auth::{Caller, Tokens};
use crate::db::{Call, CallError, Rules};
use crate::paths;
use crate::state::{ReadKind, StateHandle};

/// Everything the coordinator is told at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `farm.db`.
    pub data_dir: PathBuf,
    /// Storage URL or folder; default `<data-dir>/storage`.
    pub storage: String,
    pub lease_seconds: u32,
    pub heartbeat_seconds: u32,
    /// Failures through a job's own fault before it is given up.
    pub max_failures: u32,
    /// Requeues through no fault of the job (lost workers, lapsed leases,
    /// failing storage) before it is given up.
    pub max_requeues: u32,
    /// Attempts lost in a row to one worker before it gets no more jobs.
    pub quarantine_after: u32,
    pub limits: ImageLimits,
    pub default_checkpoint_every: u32,
    /// Largest gRPC message accepted (uploads carry images).
    pub max_message_bytes: usize,
    /// Most jobs one collection may create.
    pub max_jobs: usize,
    /// Storage URLs a submit may name inputs under, besides uploading
    /// them (`s3://bucket/photos/`); none by default.
    pub input_prefixes: Vec<String>,
    /// Open `Watch` streams allowed from one client (a user token, or an
    /// address when there are no tokens) …
    pub max_watchers_per_client: usize,
    /// … and in all.
    pub max_watchers: usize,
    /// Submits one client may have being read at once (images decoded and
    /// checked) …
    pub max_submits_per_client: usize,
    /// … and all clients together; more are refused, not queued.
    pub max_submits: usize,
    /// Open connections from one address, on both ports together …
    pub max_connections_per_address: usize,
    /// … and in all (default: half the process's file descriptors).
    pub max_connections: usize,
    /// Blocking threads for image decoding and other CPU-heavy steps (by
    /// default one fewer than the cores: one is left to the runtime).
    pub work_threads: usize,
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
    pub const MAX_REQUEUES: u32 = 10;
    pub const QUARANTINE_AFTER: u32 = 3;
    pub const CHECKPOINT_EVERY: u32 = 20;
    pub const MAX_REQUEST_MB: usize = 256;
    pub const MAX_JOBS: usize = 10_000;
    pub const MAX_WATCHERS_PER_CLIENT: usize = 256;
    pub const MAX_WATCHERS: usize = 4096;
    pub const MAX_SUBMITS_PER_CLIENT: usize = 2;
    pub const MAX_SUBMITS: usize = 16;
    pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 256;

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
            max_requeues: Self::MAX_REQUEUES,
            quarantine_after: Self::QUARANTINE_AFTER,
            limits: ImageLimits::default(),
            default_checkpoint_every: Self::CHECKPOINT_EVERY,
            max_message_bytes: Self::MAX_REQUEST_MB << 20,
            max_jobs: Self::MAX_JOBS,
            input_prefixes: Vec::new(),
            max_watchers_per_client: Self::MAX_WATCHERS_PER_CLIENT,
            max_watchers: Self::MAX_WATCHERS,
            max_submits_per_client: Self::MAX_SUBMITS_PER_CLIENT,
            max_submits: Self::MAX_SUBMITS,
            work_threads: crate::admission::Work::default_threads(),
            max_connections_per_address: Self::MAX_CONNECTIONS_PER_ADDRESS,
            max_connections: crate::conn::Gate::default_total(),
            metrics_listen: None,
            tokens: Tokens::default(),
            tls: None,
        }
    }

    pub(crate) fn rules(&self) -> Rules {
        Rules {
            lease_seconds: self.lease_seconds as f64,
            max_failures: self.max_failures.max(1),
            max_requeues: self.max_requeues,
            quarantine_after: self.quarantine_after.max(1),
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
    pub(crate) state: StateHandle,
    pub(crate) store: Store,
    /// The farm's identity, also in storage at [`paths::FARM_MARKER`].
    pub(crate) farm_id: String,
    /// The operator's `--input-prefix` locations, opened at start.
    pub(crate) input_stores: Vec<(String, Store)>,
    pub(crate) config: Config,
    /// Open `Watch` and dashboard event streams, counted against the limits.
    pub(crate) watchers: Arc<Admission>,
    /// Submits being read and checked, counted against the limits.
    pub(crate) submits: Arc<Admission>,
    /// Dashboard zips being built, counted against their limits.
    pub(crate) zips: Arc<Admission>,
    /// Where image decoding and other CPU-heavy steps run.
    pub(crate) work: Work,
    /// One merger of committed changes per watched collection.
    pub(crate) hubs: crate::hub::Hubs,
}

/// The stream the generated `Farm` trait's `watch` returns.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

/// How long a Watch may wait for its client to take the next message
/// before it is cut off.
pub(crate) const WATCH_SEND_PATIENCE: Duration = Duration::from_secs(30);

/// A page token: the sequence number of the last item handed out.
fn page_after(token: &str) -> Result<i64, Status> {
    if token.is_empty() {
        return Ok(0);
    }
    token.parse::<i64>().map_err(|_| Status::invalid_argument(format!("page_token `{token}` was not handed out by this call")))
}

fn page_token(next: Option<i64>) -> String {
    next.map(|n| n.to_string()).unwrap_or_default()
}

pub(crate) fn db_err(e: rusqlite::Error) -> Status {
    tracing::error!("database: {e}");
    Status::internal("the coordinator's database failed (see its log)")
}

fn call_err(e: CallError) -> Status {
    match e {
        CallError::NoJob(_) | CallError::NotRegistered(_) => Status::not_found(e.to_string()),
        CallError::WrongWorker { .. } => Status::permission_denied(e.to_string()),
        CallError::Quarantined { .. } | CallError::Stale { .. } | CallError::Refused { .. } => Status::failed_precondition(e.to_string()),
        CallError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        CallError::Db(e) => db_err(e),
    }
}

/// Storage trouble as a caller sees it: what failed, not where.
pub(crate) fn storage_err(what: &str, e: impl std::fmt::Display) -> Status {
    tracing::error!("storage: {what}: {e}");
    Status::unavailable(format!("the farm's storage could not {what}; try again later"))
}

/// The `Farm` service (users).
#[derive(Clone)]
pub struct FarmService(pub(crate) Arc<State>);
/// The `Workers` service (workers).
#[derive(Clone)]
pub struct WorkersService(pub(crate) Arc<State>);

impl FarmService {
    /// The collection `id`, if the caller may see it: another user's is
    /// NOT_FOUND, exactly as one that does not exist.
    async fn visible(&self, caller: &Caller, id: &str) -> Result<pb::Collection, Status> {
        self.visible_as(ReadKind::Call, caller, id).await
    }

    /// [`FarmService::visible`], reading as `kind`.
    async fn visible_as(&self, kind: ReadKind, caller: &Caller, id: &str) -> Result<pb::Collection, Status> {
        let owned = id.to_string();
        match self.0.state.read_as(kind, move |db| db.collection(&owned)).await?.map_err(db_err)? {
            Some((owner, c)) if caller.may_see(&owner) => Ok(c),
            _ => Err(Status::not_found(format!("no collection {id}"))),
        }
    }

    /// Cancel or Retry on one job the caller may see; the job as it is after.
    async fn act_on_job(&self, request: Request<pb::JobRef>, event: crate::machine::Event) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&request);
        let id = request.into_inner().job_id;
        let owned = id.clone();
        match self.0.state.read(move |db| db.job(&owned)).await?.map_err(db_err)? {
            Some((owner, _)) if caller.may_see(&owner) => {}
            _ => return Err(Status::not_found(format!("no job {id}"))),
        }
        let owned = id.clone();
        self.0.state.write(move |db| db.act_on_job(&owned, event)).await?.map_err(call_err)?;
        let owned = id.clone();
        let detail = self.0.state.read(move |db| db.job(&owned)).await?.map_err(db_err)?;
        detail.and_then(|(_, d)| d.job).map(Response::new).ok_or_else(|| Status::not_found(format!("no job {id}")))
    }

    /// NOT_FOUND unless the caller may see collection `id`.
    pub(crate) async fn check_visible(&self, caller: &Caller, id: &str) -> Result<(), Status> {
        let owned = id.to_string();
        match self.0.state.read(move |db| db.owner(&owned)).await?.map_err(db_err)? {
            Some(owner) if caller.may_see(&owner) => Ok(()),
            _ => Err(Status::not_found(format!("no collection {id}"))),
        }
    }
}

#[tonic::async_trait]
impl Farm for FarmService {
    async fn submit(&self, request: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        self.submit_collection(request).await
    }

    async fn get_collection(&self, request: Request<pb::CollectionRef>) -> Result<Response<pb::Collection>, Status> {
        let caller = Caller::of(&request);
        Ok(Response::new(self.visible(&caller, &request.into_inner().collection_id).await?))
    }

    async fn list_collections(&self, request: Request<pb::ListCollectionsRequest>) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let after = page_after(&r.page_token)?;
        let limit = if r.page_size == 0 { 100 } else { r.page_size.min(1000) };
        let owner = (!caller.admin).then_some(caller.owner);
        let (collections, next) = self.0.state.read(move |db| db.collections_page(owner.as_deref(), after, limit)).await?.map_err(db_err)?;
        Ok(Response::new(pb::ListCollectionsResponse { collections, next_page_token: page_token(next) }))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let after = page_after(&r.page_token)?;
        let limit = if r.page_size == 0 { 1000 } else { r.page_size.min(10_000) };
        self.check_visible(&caller, &r.collection_id).await?;
        let (jobs, next) = self.0.state.read(move |db| db.jobs_page(&r.collection_id, after, limit)).await?.map_err(db_err)?;
        Ok(Response::new(pb::ListJobsResponse { jobs, next_page_token: page_token(next) }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<pb::CollectionRef>) -> Result<Response<Self::WatchStream>, Status> {
        crate::watch::watch_decoded(self, request).await
    }

    async fn cancel(&self, request: Request<pb::CollectionRef>) -> Result<Response<pb::Collection>, Status> {
        let caller = Caller::of(&request);
        let id = request.into_inner().collection_id;
        self.check_visible(&caller, &id).await?;
        let owned = id.clone();
        self.0.state.write(move |db| db.cancel(&owned)).await?.map_err(db_err)?;
        Ok(Response::new(self.visible(&caller, &id).await?))
    }

    type FetchStream = Pin<Box<dyn Stream<Item = Result<pb::FetchChunk, Status>> + Send>>;

    async fn fetch(&self, request: Request<pb::FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        if !paths::readable(&r.collection_id, &r.key) {
            return Err(Status::invalid_argument(format!("key `{}` is not inside collection {}", r.key, r.collection_id)));
        }
        self.check_visible(&caller, &r.collection_id).await?;
        match self.0.store.size(&r.key).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(Status::not_found(format!("collection {} has no object {}", r.collection_id, r.key))),
            Err(e) => return Err(storage_err(&format!("read {}", r.key), e)),
        }
        let (size, pieces) = self.0.store.get_stream(&r.key).await.map_err(|e| storage_err(&format!("read {}", r.key), e))?;
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(send_chunks(size, pieces, r.key, tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn get_job(&self, request: Request<pb::JobRef>) -> Result<Response<pb::JobDetail>, Status> {
        let caller = Caller::of(&request);
        let id = request.into_inner().job_id;
        let owned = id.clone();
        match self.0.state.read(move |db| db.job(&owned)).await?.map_err(db_err)? {
            Some((owner, detail)) if caller.may_see(&owner) => Ok(Response::new(detail)),
            _ => Err(Status::not_found(format!("no job {id}"))),
        }
    }

    async fn list_job_files(&self, request: Request<pb::JobRef>) -> Result<Response<pb::ListJobFilesResponse>, Status> {
        let caller = Caller::of(&request);
        let id = request.into_inner().job_id;
        let owned = id.clone();
        let (folder, attempt) = match self.0.state.read(move |db| db.latest_attempt(&owned)).await?.map_err(db_err)? {
            Some((collection, owner, attempt)) if caller.may_see(&owner) => (paths::attempt(&collection, &id, attempt.max(1)), attempt),
            _ => return Err(Status::not_found(format!("no job {id}"))),
        };
        if attempt == 0 {
            return Ok(Response::new(pb::ListJobFilesResponse { attempt, files: Vec::new() }));
        }
        let listed = self.0.store.list_all(&folder).await.map_err(|e| storage_err("list the job's files", e))?;
        let files = listed
            .into_iter()
            .map(|(name, size)| pb::JobFile { key: paths::in_attempt(&folder, &name), name, size_bytes: size })
            .collect();
        Ok(Response::new(pb::ListJobFilesResponse { attempt, files }))
    }

    async fn cancel_job(&self, request: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        self.act_on_job(request, crate::machine::Event::Cancel).await
    }

    async fn retry_job(&self, request: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        self.act_on_job(request, crate::machine::Event::Retry).await
    }

    async fn list_workers(&self, request: Request<pb::ListWorkersRequest>) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let r = request.into_inner();
        let after = page_after(&r.page_token)?;
        let max = crate::limits::MAX_WORKERS_PAGE;
        let limit = if r.page_size == 0 { max } else { r.page_size.min(max) };
        let (workers, next) = self.0.state.read(move |db| db.workers_page(after, limit)).await?.map_err(db_err)?;
        Ok(Response::new(pb::ListWorkersResponse { workers, next_page_token: page_token(next) }))
    }
}

/// What a watcher needs of a changed job: what can change (its place and
/// names it has from the snapshot).
pub(crate) fn changed_part(job: &pb::Job) -> pb::Job {
    pb::Job {
        job_id: job.job_id.clone(),
        state: job.state,
        attempts: job.attempts,
        progress: job.progress.clone(),
        worker: job.worker.clone(),
        error: job.error.clone(),
        output_key: job.output_key.clone(),
        started_from: job.started_from,
        failures: job.failures,
        requeues: job.requeues,
        ..Default::default()
    }
}

/// Sends an object in chunks of up to 1 MiB.
async fn send_chunks(size: u64, mut pieces: stylefarm_shared::storage::ByteStream, key: String, tx: mpsc::Sender<Result<pb::FetchChunk, Status>>) {
    const CHUNK: usize = 1 << 20;
    let mut buffer = Vec::with_capacity(CHUNK.min(size as usize));
    let mut first = true;
    loop {
        let next = tokio_stream::StreamExt::next(&mut pieces).await;
        let end = match next {
            Some(Ok(bytes)) => {
                buffer.extend_from_slice(&bytes);
                false
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(storage_err(&format!("read {key}"), e))).await;
                return;
            }
            None => true,
        };
        while buffer.len() >= CHUNK || (end && (!buffer.is_empty() || first)) {
            let rest = buffer.split_off(buffer.len().min(CHUNK));
            let data = std::mem::replace(&mut buffer, rest);
            let chunk = pb::FetchChunk { data, total_bytes: if first { size } else { 0 } };
            first = false;
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
        if end {
            return;
        }
    }
}

/// Progress is stored as numbers people read: a loss or an ETA that is
/// negative or not a finite number is refused (the worker fails the job as
/// BAD_INPUT instead), and so is an iteration past the iterations. The
/// database checks both against the job's own iterations.
fn check_progress(p: &Option<pb::Progress>) -> Result<(), Status> {
    let Some(p) = p else { return Ok(()) };
    for (name, v) in [("content", p.content), ("style", p.style), ("tv", p.tv), ("total", p.total), ("eta_seconds", p.eta_seconds)] {
        if !v.is_finite() {
            return Err(Status::invalid_argument(format!("progress.{name} is {v}, not a finite number")));
        }
        if v < 0.0 {
            return Err(Status::invalid_argument(format!("progress.{name} is {v}; losses and ETAs are never negative")));
        }
    }
    if p.iteration > p.iterations {
        return Err(Status::invalid_argument(format!("progress.iteration {} is past progress.iterations {}", p.iteration, p.iterations)));
    }
    Ok(())
}

/// A worker's failure message as a job's owner may read it: the farm's
/// storage location and data folder become `<storage>`, and any other
/// absolute path or URL (a worker's own --storage, a temp folder) `<path>`.
/// The full message stays in the coordinator's log.
pub(crate) fn redact_paths(message: &str, locations: &[&str]) -> String {
    let mut out = message.to_string();
    for location in locations.iter().filter(|l| l.len() > 1) {
        out = out.replace(location.trim_end_matches('/'), "<storage>");
    }
    let mut redacted = String::with_capacity(out.len());
    for (i, word) in out.split(' ').enumerate() {
        if i > 0 {
            redacted.push(' ');
        }
        let bare = word.trim_start_matches(['`', '\'', '"', '(', '[']);
        let path = (bare.starts_with('/') && bare.len() > 1) || bare.contains("://");
        if path {
            // Keep the quotes and punctuation around it.
            let trail: usize = bare.chars().rev().take_while(|c| "`'\")]:,;".contains(*c)).map(char::len_utf8).sum();
            redacted.push_str(&word[..word.len() - bare.len()]);
            redacted.push_str("<path>");
            redacted.push_str(&bare[bare.len() - trail..]);
        } else {
            redacted.push_str(word);
        }
    }
    redacted
}

/// What a worker says of itself at Register, within [`crate::limits`].
fn check_registration(r: &pb::RegisterRequest) -> Result<(), Status> {
    use crate::limits::*;
    let over = |field: &str, n: usize, most: usize| Err(Status::invalid_argument(format!("{field} is {n} bytes; at most {most}")));
    if r.name.len() > MAX_WORKER_NAME_BYTES {
        return over("name", r.name.len(), MAX_WORKER_NAME_BYTES);
    }
    if r.device_name.len() > MAX_DEVICE_NAME_BYTES {
        return over("device_name", r.device_name.len(), MAX_DEVICE_NAME_BYTES);
    }
    if r.capabilities.len() > MAX_CAPABILITIES || r.capabilities.iter().any(|c| c.len() > MAX_CAPABILITY_BYTES) {
        return Err(Status::invalid_argument(format!("capabilities: at most {MAX_CAPABILITIES} of at most {MAX_CAPABILITY_BYTES} bytes each")));
    }
    if r.memory_bytes > i64::MAX as u64 {
        return Err(Status::invalid_argument(format!("memory_bytes {} is over 2^63 - 1", r.memory_bytes)));
    }
    if !(r.device == "cpu" || r.device.strip_prefix("cuda:").is_some_and(|n| n.parse::<u32>().is_ok())) {
        let shown: String = r.device.chars().take(40).collect();
        return Err(Status::invalid_argument(format!("device `{shown}` is not cpu or cuda:N")));
    }
    Ok(())
}

fn check_file_name(field: &str, name: &str) -> Result<(), Status> {
    if paths::file_name(name) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!("{field} {name:?} is not a file name in the attempt's folder (A-Z a-z 0-9 . _ -, no /)")))
    }
}

impl WorkersService {
    fn rules(&self) -> Rules {
        self.0.config.rules()
    }

    /// The full key of a file an attempt names, after checking the name
    /// and that the lease is the caller's.
    async fn key_in_attempt(&self, lease: &Lease, field: &str, name: &str) -> Result<String, Status> {
        check_file_name(field, name)?;
        let l = lease.clone();
        let folder = self.0.state.read(move |db| db.attempt_folder(&l.call())).await?.map_err(call_err)?;
        Ok(paths::in_attempt(&folder, name))
    }
}

/// A worker's call about a job, owned, to travel to the state's thread.
#[derive(Clone)]
struct Lease {
    worker: String,
    job: String,
    token: u64,
}

impl Lease {
    fn new(worker: &str, job: &str, token: u64) -> Self {
        Lease { worker: worker.to_string(), job: job.to_string(), token }
    }

    fn call(&self) -> Call<'_> {
        Call { worker: &self.worker, job: &self.job, token: self.token }
    }
}

#[tonic::async_trait]
impl Workers for WorkersService {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = request.into_inner();
        check_registration(&r)?;
        let base: String = r.name.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).take(60).collect();
        let id = format!("{}-{}", if base.is_empty() { "worker" } else { &base }, &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let owned = id.clone();
        self.0.state.write(move |db| db.register_worker(&owned, &r)).await?.map_err(db_err)?;
        let c = &self.0.config;
        Ok(Response::new(pb::RegisterResponse {
            worker_id: id,
            storage_url: self.0.store.location().to_string(),
            heartbeat_seconds: c.heartbeat_seconds,
            lease_seconds: c.lease_seconds,
            farm_id: self.0.farm_id.clone(),
        }))
    }

    async fn lease(&self, request: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        let r = request.into_inner();
        let (worker, rules) = (r.worker_id.clone(), self.rules());
        let leased = self.0.state.write(move |db| db.lease(&worker, &rules)).await?.map_err(call_err)?;
        Ok(Response::new(match leased {
            Some(l) => {
                metrics::counter!("stylefarm_leases_total").increment(1);
                tracing::debug!(job = %l.spec.job_id, worker = %r.worker_id, attempt = l.attempt, "leased");
                pb::LeaseResponse { job: Some(l.spec), fencing_token: l.token, attempt: l.attempt }
            }
            None => pb::LeaseResponse::default(),
        }))
    }

    async fn heartbeat(&self, request: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = request.into_inner();
        check_progress(&r.progress)?;
        let lease = Lease::new(&r.worker_id, &r.job_id, r.fencing_token);
        let checkpoint = if r.checkpoint_name.is_empty() { None } else { Some(self.key_in_attempt(&lease, "checkpoint_name", &r.checkpoint_name).await?) };
        let rules = self.rules();
        let answer = self.0.state.write(move |db| db.heartbeat(&lease.call(), &r, checkpoint.as_deref(), &rules)).await?.map_err(call_err)?;
        Ok(Response::new(pb::HeartbeatResponse { cancelled: answer.cancelled }))
    }

    async fn complete(&self, request: Request<pb::CompleteRequest>) -> Result<Response<pb::CompleteResponse>, Status> {
        let r = request.into_inner();
        check_progress(&r.progress)?;
        let lease = Lease::new(&r.worker_id, &r.job_id, r.fencing_token);
        let key = self.key_in_attempt(&lease, "output_name", &r.output_name).await?;
        match self.0.store.size(&key).await {
            Ok(Some(n)) if n > 0 => {}
            Ok(_) => return Err(Status::failed_precondition(format!("the output {} is not in storage; write it before completing", r.output_name))),
            Err(e) => return Err(storage_err("check the output", e)),
        }
        let (progress, rules) = (r.progress.unwrap_or_default(), self.rules());
        let answer = self.0.state.write(move |db| db.complete(&lease.call(), &key, &progress, &rules)).await?.map_err(|e| {
            tracing::warn!(job = %r.job_id, worker = %r.worker_id, "completion refused: {e}");
            call_err(e)
        })?;
        if !answer.repeated {
            metrics::counter!("stylefarm_jobs_completed_total").increment(1);
            tracing::debug!(job = %r.job_id, worker = %r.worker_id, "completed");
        }
        Ok(Response::new(pb::CompleteResponse {}))
    }

    async fn fail(&self, request: Request<pb::FailRequest>) -> Result<Response<pb::FailResponse>, Status> {
        let r = request.into_inner();
        let kind = pb::FailureKind::try_from(r.kind).map_err(|_| Status::invalid_argument(format!("failure kind {} is not in farm.proto", r.kind)))?;
        let logged: String = r.message.chars().take(2000).collect();
        // The job's owner reads it: no storage location or host path.
        let message = redact_paths(&logged, &[self.0.store.location(), &self.0.config.data_dir.to_string_lossy()]);
        let lease = Lease::new(&r.worker_id, &r.job_id, r.fencing_token);
        let rules = self.rules();
        let answer = self.0.state.write(move |db| db.fail(&lease.call(), kind, &message, &rules)).await?.map_err(call_err)?;
        if !answer.repeated {
            metrics::counter!("stylefarm_job_failures_total", "kind" => kind.as_str_name()).increment(1);
            tracing::warn!(job = %r.job_id, worker = %r.worker_id, kind = kind.as_str_name(), "attempt failed: {logged}");
        }
        Ok(Response::new(pb::FailResponse {}))
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let r = request.into_inner();
        let lease = Lease::new(&r.worker_id, &r.job_id, r.fencing_token);
        let checkpoint = if r.checkpoint_name.is_empty() { None } else { Some(self.key_in_attempt(&lease, "checkpoint_name", &r.checkpoint_name).await?) };
        let (iteration, rules) = (r.checkpoint_iteration, self.rules());
        let answer = self.0.state.write(move |db| db.release(&lease.call(), checkpoint.as_deref().map(|k| (k, iteration)), &rules)).await?.map_err(call_err)?;
        if !answer.repeated {
            metrics::counter!("stylefarm_releases_total").increment(1);
            tracing::info!(job = %r.job_id, worker = %r.worker_id, iteration = r.checkpoint_iteration, "released");
        }
        Ok(Response::new(pb::ReleaseResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_messages_show_no_storage_or_host_paths() {
        let cases = [
            ("cannot read inputs/ab from /srv/farm/storage: permission denied", "cannot read inputs/ab from <storage>: permission denied"),
            ("cannot write out.png to s3://bucket/farm/x: 503", "cannot write out.png to <storage>/x: 503"),
            ("open `/tmp/worker-7/scratch/a.ckpt`: disk full", "open `<path>`: disk full"),
            ("the loss became inf at iteration 3; try a smaller beta", "the loss became inf at iteration 3; try a smaller beta"),
            ("read (file:///etc/x) failed", "read (<path>) failed"),
        ];
        for (given, shown) in cases {
            assert_eq!(redact_paths(given, &["/srv/farm/storage", "s3://bucket/farm/"]), shown);
        }
    }
}
