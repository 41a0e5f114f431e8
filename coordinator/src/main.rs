//! `farm-coordinator --listen ADDR --data-dir DIR [--storage URL]`

use std::path::PathBuf;

use clap::Parser;
use stylefarm_coordinator::{serve, Config};
use stylefarm_shared::image_io::ImageLimits;

#[derive(Parser)]
#[command(name = "farm-coordinator", version, about = "Stylefarm coordinator: collections, jobs, leases")]
struct Args {
    /// Address to serve gRPC on (port 0 picks a free one; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: std::net::SocketAddr,
    /// Holds farm.db (SQLite) and, by default, the storage folder.
    #[arg(long)]
    data_dir: PathBuf,
    /// Shared storage: a folder or file:// / s3:// / gs:// / az:// URL (default DATA_DIR/storage).
    #[arg(long)]
    storage: Option<String>,
    /// A lease lapses this long after the last heartbeat.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u32,
    /// How often workers heartbeat.
    #[arg(long, default_value_t = 3)]
    heartbeat_seconds: u32,
    /// Failed or lapsed attempts before a job is given up.
    #[arg(long, default_value_t = 3)]
    max_failures: u32,
    /// Largest input image accepted at submit, in megapixels.
    #[arg(long, default_value_t = 64)]
    max_input_megapixels: u64,
    /// Checkpoint interval for collections that do not set one.
    #[arg(long, default_value_t = 20)]
    checkpoint_every: u32,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// human | json (one object per line, on stderr).
    #[arg(long, default_value = "human")]
    log_format: stylefarm_shared::telemetry::LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    stylefarm_shared::telemetry::init_logging(a.log_format);
    if a.heartbeat_seconds == 0 || a.lease_seconds <= a.heartbeat_seconds {
        anyhow::bail!("--lease-seconds ({}) must be longer than --heartbeat-seconds ({}) > 0", a.lease_seconds, a.heartbeat_seconds);
    }
    let storage = a.storage.unwrap_or_else(|| a.data_dir.join("storage").to_string_lossy().into_owned());
    serve(Config {
        listen: a.listen,
        data_dir: a.data_dir,
        storage,
        lease_seconds: a.lease_seconds,
        heartbeat_seconds: a.heartbeat_seconds,
        max_failures: a.max_failures.max(1),
        limits: ImageLimits { max_pixels: a.max_input_megapixels << 20, ..ImageLimits::default() },
        default_checkpoint_every: a.checkpoint_every,
        max_message_bytes: 256 << 20,
        max_jobs: 10_000,
        metrics_listen: a.metrics_listen,
    })
    .await
}
