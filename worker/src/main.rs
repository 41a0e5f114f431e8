//! `farm-worker --coordinator URL[,URL…] --device cpu|cuda:N [--storage URL]`

use clap::Parser;

#[derive(Parser)]
#[command(name = "farm-worker", version, about = "Stylefarm worker: renders jobs leased from a coordinator on one device")]
struct Args {
    /// The coordinator, e.g. http://127.0.0.1:50051; several (comma-separated
    /// or the flag repeated) when a farm runs several on one PostgreSQL
    /// database: the worker uses one and moves to the next when it cannot
    /// be reached.
    #[arg(long = "coordinator", required = true, value_delimiter = ',')]
    coordinators: Vec<String>,
    /// The one device this worker uses: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Shared storage (default: what the coordinator announces).
    #[arg(long)]
    storage: Option<String>,
    /// A name for logs and status, unique on the farm: a worker
    /// registering under a name replaces the one before (default: the
    /// host's name and the device, e.g. render-7-cuda-0).
    #[arg(long)]
    name: Option<String>,
    /// CPU threads for the engine (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// VGG-19 weights file (default: $STYLEFARM_WEIGHTS or the cache).
    #[arg(long)]
    weights: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Bearer token with the worker scope.
    #[arg(long, env = "STYLEFARM_WORKER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    tls: stylefarm_shared::client::TlsFlags,
    /// human | json (one object per line, on stderr).
    #[arg(long, default_value = "human")]
    log_format: stylefarm_shared::telemetry::LogFormat,
}

fn main() -> anyhow::Result<()> {
    stylefarm_shared::memory::keep_freed_memory();
    let a = Args::parse();
    stylefarm_shared::telemetry::init_logging(a.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let config = stylefarm_worker::Config {
        coordinators: a.coordinators,
        name: a
            .name
            .unwrap_or_else(|| stylefarm_worker::default_name(&a.device)),
        device: a.device,
        storage: a.storage,
        threads: a.threads,
        weights: a.weights,
        metrics_listen: a.metrics_listen,
        security: a.tls.with_token(a.token),
    };
    runtime.block_on(async {
        let shutdown = stylefarm_shared::telemetry::shutdown_on_signal();
        stylefarm_worker::run(config, shutdown).await
    })?;
    Ok(())
}
