//! `farmctl up`: a whole local farm in this process — a coordinator and N
//! workers, each a library call with one shutdown token — until Ctrl-C or
//! SIGTERM, with the web dashboard on `--http-listen`. Then the workers checkpoint and give their jobs back, and the
//! coordinator stops after them, so nothing in flight is lost.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use stylefarm_coordinator::Config;
use stylefarm_shared::client::ClientSecurity;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct UpArgs {
    /// Holds the SQLite database and the storage folder.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Number of local workers (each pins the CPU, or one cuda:N each with --gpus).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Engine threads per worker (default: cores / workers).
    #[arg(long)]
    threads: Option<usize>,
    /// Give worker i the device cuda:i instead of cpu.
    #[arg(long)]
    gpus: bool,
    /// Address of the coordinator's gRPC port (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: std::net::SocketAddr,
    /// Address of the web dashboard (port 0 picks a free one); its URL is
    /// printed on the second line of stdout.
    #[arg(long, default_value = "127.0.0.1:8080", conflicts_with = "no_dashboard")]
    http_listen: std::net::SocketAddr,
    /// Serve no dashboard.
    #[arg(long)]
    no_dashboard: bool,
    /// VGG-19 weights file for the workers (default: $STYLEFARM_WEIGHTS or the cache).
    #[arg(long)]
    weights: Option<PathBuf>,
}

/// Starts the coordinator and the workers, prints the coordinator's URL on
/// stdout (and the dashboard's on the next line) and waits for Ctrl-C or
/// SIGTERM.
pub fn up(a: UpArgs) -> Result<()> {
    // The daemons' log lines, as their binaries would print them.
    stylefarm_shared::telemetry::init_logging(stylefarm_shared::telemetry::LogFormat::Human);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("cannot listen on {}", a.listen))?;
        let url = format!("http://{}", listener.local_addr()?);
        let dashboard = if a.no_dashboard {
            None
        } else {
            let http = tokio::net::TcpListener::bind(a.http_listen)
                .await
                .with_context(|| format!("cannot listen on {} for the dashboard (--http-listen ADDR, or --no-dashboard)", a.http_listen))?;
            Some(http)
        };
        let dashboard_url = dashboard.as_ref().map(|h| h.local_addr().map(|addr| format!("http://{addr}/"))).transpose()?;
        let coordinator_stop = CancellationToken::new();
        let stopped = coordinator_stop.clone();
        let mut coordinator = tokio::spawn(stylefarm_coordinator::run_with_dashboard(Config::new(a.data_dir.clone()), listener, dashboard, async move {
            stopped.cancelled().await
        }));

        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let threads = a.threads.unwrap_or((cores / a.workers.max(1)).max(1));
        let workers_stop = CancellationToken::new();
        let mut workers = Vec::new();
        for i in 0..a.workers {
            let config = stylefarm_worker::Config {
                coordinators: vec![url.clone()],
                device: if a.gpus { format!("cuda:{i}") } else { "cpu".to_string() },
                storage: None,
                name: format!("local{i}"),
                labels: Vec::new(),
                threads: Some(threads),
                weights: a.weights.clone(),
                metrics_listen: None,
                security: ClientSecurity::default(),
            };
            let (name, stop) = (config.name.clone(), workers_stop.clone());
            // A worker that stops on its own says so at once, not at shutdown.
            workers.push(tokio::spawn(async move {
                let ended = stylefarm_worker::run(config, stop).await;
                if let Err(e) = &ended {
                    eprintln!("farm up: worker {name} stopped: {e}");
                }
                ended
            }));
        }
        eprintln!("farm up: coordinator {url}, {} workers ({threads} threads each), data in {}", a.workers, a.data_dir.display());
        println!("{url}");
        if let Some(page) = &dashboard_url {
            eprintln!("farm up: dashboard {page}");
            println!("{page}");
        }

        // Until a signal — or until the coordinator fails on its own.
        tokio::select! {
            _ = stylefarm_shared::telemetry::stop_signal() => {}
            ended = &mut coordinator => {
                workers_stop.cancel();
                return match ended {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(anyhow::Error::new(e).context("the coordinator stopped")),
                    Err(e) => Err(anyhow::Error::new(e).context("the coordinator's task failed")),
                };
            }
        }
        eprintln!("farm down: stopping workers");
        workers_stop.cancel();
        for w in workers {
            if let Err(e) = w.await {
                eprintln!("worker task: {e}");
            }
        }
        coordinator_stop.cancel();
        coordinator.await.context("the coordinator's task failed")?.context("the coordinator stopped")?;
        Ok(())
    })
}
