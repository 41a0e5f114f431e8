//! Everything the coordinator is told at start: the flags of
//! `farm-coordinator` (and `farmctl up`, and tests) as one value, with
//! their defaults in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use stylefarm_shared::image_io::ImageLimits;

use crate::auth::Tokens;
use crate::schedule::Policy;
use crate::db::{Rules, Target};

/// Everything the coordinator is told at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `farm.db`.
    pub data_dir: PathBuf,
    /// Where the farm's state is: `None` for `data_dir/farm.db`.
    pub database: Option<Target>,
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
    /// How users share the workers: weights and quotas (`--share`,
    /// `--max-running`, `--max-queued`).
    pub policy: Arc<Policy>,
    /// Running jobs are preempted (taken back at a checkpoint) for work
    /// that outranks them, each at most once in this many seconds
    /// (`--min-run`); `None`: never (`--no-preemption`).
    pub min_run: Option<f64>,
    pub default_checkpoint_every: u32,
    /// Largest gRPC message accepted (uploads carry images).
    pub max_message_bytes: usize,
    /// Most jobs one collection may create.
    pub max_jobs: usize,
    /// Storage URLs a submit may name inputs under, besides uploading
    /// them (`s3://bucket/photos/`); none by default.
    pub input_prefixes: Vec<String>,
    /// URLs a submit's notify_url may start with (`https://hooks.example.com/`);
    /// none: no notifications.
    pub notify_prefixes: Vec<String>,
    /// The key notifications are signed with (HMAC-SHA256); required with
    /// `notify_prefixes`.
    pub notify_secret: Option<String>,
    /// Collections that ended more than this many days ago are deleted
    /// (`--keep-finished-days`); none: kept until someone deletes them.
    pub keep_finished_days: Option<f64>,
    /// The dashboard's address as people reach it, for the links in
    /// notifications (default: the address it listens on).
    pub public_url: Option<String>,
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
    /// Writing connections on PostgreSQL, each committing its own groups
    /// side by side (SQLite has one writer, whatever this says).
    pub writers: usize,
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
    /// Two: on 2 cores shared with the database, one coordinator's
    /// completions/s doubled from one writer to two, and fell past that
    /// (BENCHMARKS.md); a database on its own cores takes more.
    pub const WRITERS: usize = 2;
    pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
    /// A job is preempted at most once a minute: nothing thrashes.
    pub const MIN_RUN_SECONDS: f64 = 60.0;

    /// The defaults `farm-coordinator` starts with (no tokens, no TLS, no
    /// metrics; storage in `data_dir/storage`): one place for them, used by
    /// its flags, `farmctl up` and tests.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            storage: data_dir.join("storage").to_string_lossy().into_owned(),
            data_dir,
            database: None,
            lease_seconds: Self::LEASE_SECONDS,
            heartbeat_seconds: Self::HEARTBEAT_SECONDS,
            max_failures: Self::MAX_FAILURES,
            max_requeues: Self::MAX_REQUEUES,
            quarantine_after: Self::QUARANTINE_AFTER,
            limits: ImageLimits::default(),
            policy: Arc::default(),
            min_run: Some(Self::MIN_RUN_SECONDS),
            default_checkpoint_every: Self::CHECKPOINT_EVERY,
            max_message_bytes: Self::MAX_REQUEST_MB << 20,
            max_jobs: Self::MAX_JOBS,
            input_prefixes: Vec::new(),
            notify_prefixes: Vec::new(),
            notify_secret: None,
            keep_finished_days: None,
            public_url: None,
            max_watchers_per_client: Self::MAX_WATCHERS_PER_CLIENT,
            max_watchers: Self::MAX_WATCHERS,
            max_submits_per_client: Self::MAX_SUBMITS_PER_CLIENT,
            max_submits: Self::MAX_SUBMITS,
            work_threads: crate::admission::Work::default_threads(),
            writers: Self::WRITERS,
            max_connections_per_address: Self::MAX_CONNECTIONS_PER_ADDRESS,
            max_connections: crate::conn::Gate::default_total(),
            metrics_listen: None,
            tokens: Tokens::default(),
            tls: None,
        }
    }

    /// The database the farm's state is in.
    pub fn database(&self) -> Target {
        self.database.clone().unwrap_or_else(|| Target::Sqlite(self.data_dir.join("farm.db")))
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

