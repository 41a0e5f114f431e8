//! `farm-coordinator --listen ADDR --data-dir DIR [--storage URL] [--database URL]`,
//! and `farm-coordinator migrate --from sqlite:PATH --to postgres://…`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use stylefarm_coordinator::db::Target;
use stylefarm_coordinator::schedule::Policy;
use stylefarm_coordinator::{Config, TlsFiles, Tokens};
use stylefarm_shared::image_io::ImageLimits;

#[derive(Parser)]
#[command(name = "farm-coordinator", version, about = "Stylefarm coordinator: collections, jobs, leases")]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to serve gRPC on (port 0 picks a free one; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: std::net::SocketAddr,
    /// Serve the web dashboard on this address too (port 0 picks a free
    /// one; the URL is printed). Same tokens as the gRPC API; TLS with --tls-cert.
    #[arg(long)]
    http_listen: Option<std::net::SocketAddr>,
    /// Holds farm.db (SQLite) and, by default, the storage folder.
    #[arg(long, required = true)]
    data_dir: Option<PathBuf>,
    /// The farm's state: DATA_DIR/farm.db (SQLite) by default, or a
    /// PostgreSQL URL (postgres://user:password@host/db), which any number
    /// of coordinators may share (with one --storage).
    #[arg(long, env = "STYLEFARM_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// Shared storage: a folder or file:// / s3:// / gs:// / az:// URL (default DATA_DIR/storage).
    #[arg(long)]
    storage: Option<String>,
    /// A lease lapses this long after the last heartbeat.
    #[arg(long, default_value_t = Config::LEASE_SECONDS)]
    lease_seconds: u32,
    /// How often workers heartbeat.
    #[arg(long, default_value_t = Config::HEARTBEAT_SECONDS)]
    heartbeat_seconds: u32,
    /// Attempts failed through the job's own fault before it is given up.
    #[arg(long, default_value_t = Config::MAX_FAILURES)]
    max_failures: u32,
    /// Attempts lost through no fault of the job (its worker died, its
    /// lease lapsed, the worker's storage failed) before it is given up.
    #[arg(long, default_value_t = Config::MAX_REQUEUES)]
    max_requeues: u32,
    /// Attempts lost in a row to one worker before it gets no more jobs.
    #[arg(long, default_value_t = Config::QUARANTINE_AFTER)]
    quarantine_after: u32,
    /// A storage URL or folder submits may name inputs under instead of
    /// uploading them (e.g. s3://bucket/photos/). Repeatable; none by default.
    #[arg(long = "input-prefix")]
    input_prefixes: Vec<String>,
    /// A URL a submit's notify_url may start with (e.g.
    /// https://hooks.example.com/stylefarm/). Repeatable; none by default:
    /// no notifications. Needs --notify-secret.
    #[arg(long = "notify-prefix", requires = "notify_secret")]
    notify_prefixes: Vec<String>,
    /// The key notifications are signed with (HMAC-SHA256, header X-Stylefarm-Signature).
    #[arg(long, env = "STYLEFARM_NOTIFY_SECRET", hide_env_values = true)]
    notify_secret: Option<String>,
    /// The dashboard's URL as people reach it (behind a proxy), for links in
    /// notifications; default: the --http-listen address.
    #[arg(long)]
    public_url: Option<String>,
    /// Largest input image accepted at submit, in megapixels.
    #[arg(long, default_value_t = 64)]
    max_input_megapixels: u64,
    /// Checkpoint interval for collections that do not set one.
    #[arg(long, default_value_t = Config::CHECKPOINT_EVERY)]
    checkpoint_every: u32,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// A token that may use the Farm service (submit, watch, cancel…); NAME=TOKEN names its user (for --share and the quotas). Repeat, or comma-separate in the variable.
    #[arg(long = "user-token", env = "STYLEFARM_USER_TOKENS", value_delimiter = ',', hide_env_values = true)]
    user_tokens: Vec<String>,
    /// A token that may use the Farm service and sees every user's collections (NAME=TOKEN names it).
    #[arg(long = "admin-token", env = "STYLEFARM_ADMIN_TOKENS", value_delimiter = ',', hide_env_values = true)]
    admin_tokens: Vec<String>,
    /// A token that may use the Workers service (lease, heartbeat…).
    #[arg(long = "worker-token", env = "STYLEFARM_WORKER_TOKENS", value_delimiter = ',', hide_env_values = true)]
    worker_tokens: Vec<String>,
    /// Serve TLS with this certificate (PEM) …
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// … and this private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require worker client certificates signed by this CA (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Most open Watch streams from one client (a user token, or an address without tokens).
    #[arg(long, default_value_t = Config::MAX_WATCHERS_PER_CLIENT)]
    max_watchers_per_client: usize,
    /// Most open Watch streams in all.
    #[arg(long, default_value_t = Config::MAX_WATCHERS)]
    max_watchers: usize,
    /// Most submits one client may have being read at once (more are refused).
    #[arg(long, default_value_t = Config::MAX_SUBMITS_PER_CLIENT)]
    max_submits_per_client: usize,
    /// Most submits being read at once in all.
    #[arg(long, default_value_t = Config::MAX_SUBMITS)]
    max_submits: usize,
    /// Threads that decode uploaded images (default: cores - 1; dashboard zips draw on one of their own).
    #[arg(long)]
    work_threads: Option<usize>,
    /// Writing connections on PostgreSQL, committing side by side (SQLite has one).
    #[arg(long, default_value_t = Config::WRITERS)]
    writers: usize,
    /// Most open connections from one address (both ports together; more are closed at once).
    #[arg(long, default_value_t = Config::MAX_CONNECTIONS_PER_ADDRESS)]
    max_connections_per_address: usize,
    /// Most open connections in all (default: half the file descriptors this process may open).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Delete collections that ended (nothing queued or running) more than
    /// this many days ago, with everything they left in storage (default:
    /// keep them until someone deletes them).
    #[arg(long, value_parser = positive_days)]
    keep_finished_days: Option<f64>,
    /// A user's weight in sharing the workers: NAME=W, NAME as in --user-token NAME=TOKEN (every user weighs 1 unless named). Repeat.
    #[arg(long = "share")]
    shares: Vec<String>,
    /// Most workers one user's jobs may hold at once: NAME=N, or '*=N' for every user not named. Repeat.
    #[arg(long)]
    max_running: Vec<String>,
    /// Most jobs one user may have queued (a submit past it is refused): NAME=N, or '*=N'. Repeat.
    #[arg(long)]
    max_queued: Vec<String>,
    /// A running job is preempted (checkpointed and given back, at no cost to it) when queued work outranks it: a higher-priority job of its user, or a user 2+ workers further below their share. At most once per this many seconds per job.
    #[arg(long, value_name = "SECONDS", default_value_t = Config::MIN_RUN_SECONDS, value_parser = non_negative_seconds)]
    min_run: f64,
    /// Never preempt: a job keeps its worker until it ends.
    #[arg(long)]
    no_preemption: bool,
    /// Most jobs one collection may have.
    #[arg(long, default_value_t = Config::MAX_JOBS)]
    max_jobs: usize,
    /// Largest request accepted, in MiB (uploads carry images).
    #[arg(long, default_value_t = Config::MAX_REQUEST_MB)]
    max_request_mb: usize,
    /// human | json (one object per line, on stderr).
    #[arg(long, default_value = "human")]
    log_format: stylefarm_shared::telemetry::LogFormat,
}

/// `--keep-finished-days`: a number of days above zero (fractions allowed).
fn positive_days(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(d) if d.is_finite() && d > 0.0 => Ok(d),
        _ => Err(format!("`{s}` is not a number of days above 0 (e.g. 30, or 0.5 for twelve hours)")),
    }
}

fn non_negative_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(d) if d.is_finite() && d >= 0.0 => Ok(d),
        _ => Err(format!("`{s}` is not a number of seconds (0 or more)")),
    }
}

#[derive(clap::Subcommand)]
enum Command {
    /// Copy a farm's state (collections, jobs, attempts, workers,
    /// counters) from its SQLite file into an empty PostgreSQL database.
    /// Stop the coordinator first; the file is only read.
    Migrate {
        /// sqlite:PATH (the coordinator's DATA_DIR/farm.db).
        #[arg(long)]
        from: String,
        /// postgres://… (its schema is created if missing; it must hold no farm yet).
        #[arg(long, env = "STYLEFARM_DATABASE", hide_env_values = true)]
        to: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    stylefarm_shared::telemetry::init_logging(a.log_format);
    if let Some(Command::Migrate { from, to }) = a.command {
        let (from, to) = (Target::parse(&from).map_err(anyhow::Error::msg)?, Target::parse(&to).map_err(anyhow::Error::msg)?);
        let copied = tokio::task::spawn_blocking(move || stylefarm_coordinator::db::copy::copy(&from, &to)).await??;
        for (table, rows) in copied {
            println!("{table}: {rows} rows");
        }
        return Ok(());
    }
    let Some(data_dir) = a.data_dir else { anyhow::bail!("--data-dir is required") };
    let database = a.database.filter(|d| !d.is_empty()).map(|d| Target::parse(&d)).transpose().map_err(anyhow::Error::msg)?;
    if a.heartbeat_seconds == 0 || a.lease_seconds <= a.heartbeat_seconds {
        anyhow::bail!("--lease-seconds ({}) must be longer than --heartbeat-seconds ({}) > 0", a.lease_seconds, a.heartbeat_seconds);
    }
    let tokens = Tokens::from_flags(&a.user_tokens, &a.admin_tokens, &a.worker_tokens).map_err(anyhow::Error::msg)?;
    let policy = Policy::from_flags(&a.shares, &a.max_running, &a.max_queued, |name| tokens.owner_named(name).map(str::to_string)).map_err(anyhow::Error::msg)?;
    let storage = a.storage.unwrap_or_else(|| data_dir.join("storage").to_string_lossy().into_owned());
    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("cannot listen on {}", a.listen))?;
    let dashboard = match a.http_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (--http-listen)"))?),
        None => None,
    };
    // Scripts and tests read these lines to learn the ports (with …:0);
    // one write, so a reader that stops after them never breaks the pipe.
    let mut said = format!("farm-coordinator listening on {}\n", listener.local_addr()?);
    if let Some(http) = &dashboard {
        let scheme = if a.tls_cert.is_some() { "https" } else { "http" };
        said += &format!("farm-coordinator dashboard on {scheme}://{}/\n", http.local_addr()?);
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(said.as_bytes()).and_then(|()| out.flush()).context("cannot write to stdout")?;
    }
    let config = Config {
        data_dir,
        database,
        storage,
        lease_seconds: a.lease_seconds,
        heartbeat_seconds: a.heartbeat_seconds,
        max_failures: a.max_failures.max(1),
        max_requeues: a.max_requeues,
        quarantine_after: a.quarantine_after.max(1),
        input_prefixes: a.input_prefixes,
        notify_prefixes: a.notify_prefixes,
        notify_secret: a.notify_secret.filter(|s| !s.is_empty()),
        keep_finished_days: a.keep_finished_days,
        public_url: a.public_url,
        limits: ImageLimits {
            max_pixels: a.max_input_megapixels << 20,
            ..ImageLimits::default()
        },
        default_checkpoint_every: a.checkpoint_every,
        max_message_bytes: a.max_request_mb.max(1) << 20,
        max_jobs: a.max_jobs.max(1),
        max_watchers_per_client: a.max_watchers_per_client,
        max_watchers: a.max_watchers,
        max_submits_per_client: a.max_submits_per_client.max(1),
        max_submits: a.max_submits.max(1),
        max_connections_per_address: a.max_connections_per_address.max(1),
        max_connections: a.max_connections.unwrap_or_else(stylefarm_coordinator::default_max_connections).max(1),
        work_threads: a.work_threads.unwrap_or_else(stylefarm_coordinator::default_work_threads).max(1),
        writers: a.writers.max(1),
        metrics_listen: a.metrics_listen,
        policy: Arc::new(policy),
        min_run: (!a.no_preemption).then_some(a.min_run),
        tokens,
        tls: a.tls_cert.zip(a.tls_key).map(|(cert, key)| TlsFiles { cert, key, client_ca: a.tls_client_ca }),
    };
    stylefarm_coordinator::run_with_dashboard(config, listener, dashboard, stylefarm_shared::telemetry::stop_signal()).await?;
    Ok(())
}
