//! Logs, metrics and stop signals for the daemons: tracing-subscriber on
//! stderr (human or one JSON object per line), a Prometheus `/metrics`
//! endpoint, and Ctrl-C/SIGTERM as a future or a cancellation token.

use std::net::SocketAddr;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "human" => Ok(Self::Human),
            "json" => Ok(Self::Json),
            other => Err(format!("log format `{other}` is not human or json")),
        }
    }
}

/// Installs the global subscriber; `RUST_LOG` filters (default `info`).
/// Each worker attempt's lines are kept too ([`crate::attempt_log`]).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Every attempt's own lines are also kept for its worker.log.
    let registry = tracing_subscriber::registry().with(filter).with(crate::attempt_log::Layer);
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => registry.with(lines).try_init(),
        LogFormat::Json => registry.with(lines.json().with_current_span(true).with_span_list(true)).try_init(),
    };
}

/// Resolves at the first Ctrl-C or SIGTERM (a pre-emption, a `kill`, a
/// pod shutting down): the daemons and long renders checkpoint on it.
pub async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let sigterm = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm => {}
    }
}

/// A token cancelled at the first Ctrl-C or SIGTERM, for code that asks
/// "should I stop?" between iterations rather than awaiting. Needs a Tokio
/// runtime (the watching task runs on it).
pub fn shutdown_on_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        stop_signal().await;
        cancel.cancel();
    });
    token
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {reason}")]
pub struct MetricsError {
    addr: SocketAddr,
    reason: String,
}

/// Serves Prometheus metrics at `http://addr/metrics` (needs a Tokio
/// runtime). The recorder is process-wide: one per process.
pub fn serve_metrics(addr: SocketAddr) -> Result<(), MetricsError> {
    let fail = |reason: String| MetricsError { addr, reason };
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0])
        .map_err(|e| fail(e.to_string()))?
        .install()
        .map_err(|e| fail(e.to_string()))
}
