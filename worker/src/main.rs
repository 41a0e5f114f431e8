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
    /// A name for logs, status and `farmctl workers drain NAME`, unique on
    /// the farm: a worker restarted under its name replaces the one that
    /// died; while a worker of that name is alive, this one waits for it
    /// (30 s), then stops (default: the host's name and the device,
    /// numbered when several run on one host: render-7-cpu, render-7-cpu-2).
    #[arg(long)]
    name: Option<String>,
    /// A label KEY=VALUE (pool=a100, zone=eu): a job that requires labels
    /// (farmctl submit --require) goes only to a worker that has them all.
    /// Repeat. The worker adds device=cpu|cuda and model=… itself.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = label)]
    labels: Vec<String>,
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

fn label(s: &str) -> Result<String, String> {
    stylefarm_proto::labels::check(s).map(|()| s.to_string())
}

fn main() -> anyhow::Result<()> {
    stylefarm_shared::memory::keep_freed_memory();
    let a = Args::parse();
    stylefarm_shared::telemetry::init_logging(a.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // Unnamed, the worker holds its numbered slot for as long as it runs.
    let default_name = a.name.is_none().then(|| stylefarm_worker::default_name(&a.device));
    let config = stylefarm_worker::Config {
        coordinators: a.coordinators,
        name: a.name.or_else(|| default_name.as_ref().map(|d| d.name.clone())).unwrap_or_default(),
        device: a.device,
        storage: a.storage,
        labels: a.labels,
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
