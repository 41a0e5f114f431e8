//! The worker daemon. It pins one device, then loops: lease a job, render it
//! with the engine, checkpoint into storage under its attempt's prefix
//! (`…/attempt-<token>/`), heartbeat progress, and complete. A job that comes
//! with a checkpoint from an earlier attempt resumes from it. On SIGTERM it
//! checkpoints at once, gives the lease back and exits.
//!
//! The render runs on a blocking thread; storage and RPC calls from it go
//! through the runtime's handle. A separate task heartbeats on a timer, so a
//! slow iteration never lets the lease lapse.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use stylefarm_engine::checkpoint::{Checkpoint, Identity, LossRecord};
use stylefarm_engine::{pixels, DType, Device, RenderParams, Renderer, Tensor, Vgg19, VggWeights};
use stylefarm_proto as pb;
use stylefarm_proto::workers_client::WorkersClient;
use stylefarm_shared::checkpoints::CheckpointStore;
use stylefarm_shared::image_io::{self, decode_rgb, ImageLimits};
use stylefarm_shared::storage::Store;
use stylefarm_shared::{plot, weights};
use tokio::runtime::Handle;
use stylefarm_proto::security::{Bearer, ClientSecurity};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

pub struct Config {
    pub coordinator: String,
    pub device: String,
    pub storage: Option<String>,
    pub name: String,
    pub weights: Option<std::path::PathBuf>,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Token and TLS settings for reaching the coordinator.
    pub security: ClientSecurity,
}

type Client = WorkersClient<InterceptedService<Channel, Bearer>>;

/// Set by SIGTERM or Ctrl-C.
static STOP: AtomicBool = AtomicBool::new(false);

/// Connects, retrying with capped exponential backoff (0.2 s … 5 s) until
/// the coordinator answers.
async fn connect(url: &str, security: &ClientSecurity) -> Result<Channel> {
    let endpoint = security.endpoint(url).map_err(anyhow::Error::msg)?;
    let mut delay = Duration::from_millis(200);
    loop {
        match endpoint.connect().await {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!("coordinator {url} not reachable ({e}); retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// What the worker knows for its whole life.
struct Ctx {
    client: Client,
    worker_id: String,
    store: Store,
    heartbeat: Duration,
    weights: VggWeights,
    device: Device,
    /// `cpu` or `cuda:N`, the metrics' label.
    device_label: String,
}

pub async fn run(config: Config) -> Result<()> {
    if let Some(addr) = config.metrics_listen {
        stylefarm_shared::telemetry::serve_metrics(addr).map_err(anyhow::Error::msg)?;
    }
    let device = stylefarm_shared::device::open(&config.device)?;
    let weights = weights::load(&weights::weights_path(config.weights.as_deref()), &device)?;
    tokio::spawn(async {
        stylefarm_shared::telemetry::stop_signal().await;
        STOP.store(true, Ordering::SeqCst);
    });
    let bearer = config.security.bearer().map_err(anyhow::Error::msg)?;
    let mut client = WorkersClient::with_interceptor(connect(&config.coordinator, &config.security).await?, bearer);
    let registration = loop {
        let request = pb::RegisterRequest {
            name: config.name.clone(),
            device: config.device.clone(),
            device_name: format!("{device:?}"),
            memory_bytes: 0,
            capabilities: vec!["adam".into(), "lbfgs".into()],
        };
        match client.register(request).await {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == Code::Unavailable => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(s) => bail!("the coordinator refused registration: {}", s.message()),
        }
    };
    let storage = config.storage.clone().unwrap_or(registration.storage_url.clone());
    let store = Store::open(&storage)?;
    tracing::info!(worker = %registration.worker_id, device = %config.device, %storage, "registered");
    let ctx = Arc::new(Ctx {
        client,
        worker_id: registration.worker_id,
        store,
        heartbeat: Duration::from_secs(registration.heartbeat_seconds.max(1) as u64),
        weights,
        device,
        device_label: config.device.clone(),
    });
    let mut delay = Duration::from_millis(200);
    while !STOP.load(Ordering::SeqCst) {
        let lease = ctx.client.clone().lease(pb::LeaseRequest { worker_id: ctx.worker_id.clone(), free_memory_bytes: 0 }).await;
        match lease {
            Ok(r) => {
                delay = Duration::from_millis(200);
                let r = r.into_inner();
                match r.job {
                    Some(job) => {
                        let ctx = ctx.clone();
                        let token = r.fencing_token;
                        let span = tracing::info_span!("attempt", job = %job.job_id, token, attempt = r.attempt);
                        let outcome = tokio::task::spawn_blocking(move || span.in_scope(|| run_job(&ctx, job, token))).await;
                        if let Err(e) = outcome.map_err(anyhow::Error::from).and_then(|r| r) {
                            tracing::error!("{e:#}");
                        }
                    }
                    None => tokio::time::sleep(Duration::from_millis(300)).await,
                }
            }
            Err(s) => {
                tracing::warn!("lease failed ({}); retrying in {delay:?}", s.message());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::info!(worker = %ctx.worker_id, "stopped");
    Ok(())
}

/// How a job attempt ended, when it did not fail.
enum Outcome {
    Completed,
    /// Cancelled, or the lease was taken over: nothing more to do.
    Abandoned(String),
    /// SIGTERM: checkpointed and given back.
    Released,
}

/// Errors that mean the job itself is bad, never retried.
struct BadInput(String);

fn to_tensor(img: &image::RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    Ok(pixels::to_tensor(img.as_raw(), w as usize, h as usize, DType::F32, device)?)
}

fn run_job(ctx: &Ctx, job: pb::JobSpec, token: u64) -> Result<()> {
    let rt = Handle::current();
    let mut client = ctx.client.clone();
    let fail = |kind: pb::FailureKind, message: String| {
        tracing::warn!("failed: {message}");
        let r = pb::FailRequest { worker_id: ctx.worker_id.clone(), job_id: job.job_id.clone(), fencing_token: token, kind: kind as i32, message };
        let _ = rt.block_on(ctx.client.clone().fail(r));
    };
    let started = Instant::now();
    let outcome = match render(ctx, &rt, &mut client, &job, token) {
        Ok(o) => o,
        Err(RenderError::Bad(BadInput(m))) => {
            fail(pb::FailureKind::BadInput, m);
            return Ok(());
        }
        Err(RenderError::Other(e)) => {
            fail(pb::FailureKind::Internal, format!("{e:#}"));
            return Ok(());
        }
    };
    match outcome {
        Outcome::Completed => {
            metrics::histogram!("stylefarm_render_seconds", "device" => ctx.device_label.clone()).record(started.elapsed().as_secs_f64());
            tracing::info!(seconds = started.elapsed().as_secs_f64(), "completed")
        }
        Outcome::Abandoned(why) => tracing::warn!("abandoned: {why}"),
        Outcome::Released => tracing::info!("checkpointed and released"),
    }
    Ok(())
}

enum RenderError {
    Bad(BadInput),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for RenderError {
    fn from(e: E) -> Self {
        RenderError::Other(e.into())
    }
}

fn bad(m: impl std::fmt::Display) -> RenderError {
    RenderError::Bad(BadInput(m.to_string()))
}

/// Shared between the render thread and the heartbeat task.
struct Beat {
    progress: Mutex<pb::Progress>,
    cancelled: AtomicBool,
    stale: AtomicBool,
    done: AtomicBool,
}

fn render(ctx: &Ctx, rt: &Handle, client: &mut Client, job: &pb::JobSpec, token: u64) -> Result<Outcome, RenderError> {
    let job_store = ctx.store.sub(&job.prefix);
    let (w, h) = (job.width, job.height);
    let params: RenderParams = serde_json::from_str(&job.params_json).map_err(|e| bad(format!("render parameters: {e}")))?;
    params.validate(job.style_keys.len()).map_err(bad)?;
    let limits = ImageLimits::default();
    let load = |key: &str, role: &str| -> Result<Tensor, RenderError> {
        let bytes = rt.block_on(ctx.store.get(key))?;
        let img = decode_rgb(&bytes, &format!("{role} {key}"), limits).map_err(bad)?;
        Ok(to_tensor(&image_io::resize(&img, w, h), &ctx.device)?)
    };
    let content = load(&job.content_key, "content")?;
    let styles = job.style_keys.iter().map(|k| load(k, "style")).collect::<Result<Vec<_>, _>>()?;
    let identity = Identity::new(&params, &content, &styles, None)?;
    let vgg = Arc::new(Vgg19::new(&ctx.weights, params.pooling, DType::F32)?);
    let renderer = Renderer::new(vgg, params.clone(), &content, &styles).map_err(bad)?;

    // Resume from the checkpoint the coordinator recorded, if it is sound.
    let mut start = None;
    if !job.resume_key.is_empty() {
        match rt.block_on(ctx.store.get(&job.resume_key)).map_err(anyhow::Error::from).and_then(|b| Ok(Checkpoint::decode(&b, &ctx.device)?)) {
            Ok(ck) => match ck.identity.difference(&identity) {
                None => start = Some(ck),
                Some(d) => tracing::warn!("not resuming from {}: {d}", job.resume_key),
            },
            Err(e) => tracing::warn!("not resuming from {}: {e:#}", job.resume_key),
        }
    }
    let (mut state, mut history) = match start {
        Some(ck) => {
            tracing::info!(iteration = ck.state.iteration, "resuming from checkpoint");
            (ck.state, ck.history)
        }
        None => (renderer.initial_state(&content, None)?, Vec::new()),
    };
    let checkpoints = CheckpointStore::new(job_store.sub(&format!("attempt-{token}")), 2);

    // Heartbeats on a timer, whatever the render thread is doing.
    let beat = Arc::new(Beat { progress: Mutex::new(pb::Progress::default()), cancelled: AtomicBool::new(false), stale: AtomicBool::new(false), done: AtomicBool::new(false) });
    let hb = beat.clone();
    let (mut hb_client, worker_id, job_id, period) = (client.clone(), ctx.worker_id.clone(), job.job_id.clone(), ctx.heartbeat);
    rt.spawn(async move {
        while !hb.done.load(Ordering::SeqCst) {
            let progress = hb.progress.lock().map(|p| p.clone()).unwrap_or_default();
            let r = pb::HeartbeatRequest { worker_id: worker_id.clone(), job_id: job_id.clone(), fencing_token: token, progress: Some(progress), ..Default::default() };
            match hb_client.heartbeat(r).await {
                Ok(resp) if resp.get_ref().cancelled => hb.cancelled.store(true, Ordering::SeqCst),
                Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => hb.stale.store(true, Ordering::SeqCst),
                _ => {}
            }
            tokio::time::sleep(period).await;
        }
    });
    let outcome = (|| -> Result<Outcome, RenderError> {
        let offset = history.last().map(|r: &LossRecord| r.seconds).unwrap_or(0.0);
        let started = Instant::now();
        let first = state.iteration;
        let iterations = params.iterations;
        let progress = |it: usize, l: &stylefarm_engine::Losses| {
            let per = started.elapsed().as_secs_f64() / (it - first).max(1) as f64;
            pb::Progress { iteration: it as u32, iterations: iterations as u32, content: l.content, style: l.style, tv: l.tv, total: l.total, eta_seconds: per * (iterations - it) as f64 }
        };
        let save = |state: &stylefarm_engine::RenderState, history: &Vec<LossRecord>| -> Result<String, RenderError> {
            let ck = Checkpoint { state: state.clone(), history: history.clone(), identity: identity.clone() };
            let t = Instant::now();
            let bytes = rt.block_on(checkpoints.save(&ck))?;
            metrics::histogram!("stylefarm_checkpoint_seconds").record(t.elapsed().as_secs_f64());
            metrics::histogram!("stylefarm_checkpoint_bytes").record(bytes as f64);
            Ok(format!("{}/attempt-{token}/ckpt-{:08}.safetensors", job.prefix, state.iteration))
        };
        while state.iteration < iterations {
            if beat.cancelled.load(Ordering::SeqCst) {
                return Ok(Outcome::Abandoned("cancelled".into()));
            }
            if beat.stale.load(Ordering::SeqCst) {
                return Ok(Outcome::Abandoned("the lease was taken over".into()));
            }
            if STOP.load(Ordering::SeqCst) {
                let key = if state.iteration > 0 { save(&state, &history)? } else { String::new() };
                let r = pb::ReleaseRequest { worker_id: ctx.worker_id.clone(), job_id: job.job_id.clone(), fencing_token: token, checkpoint_iteration: state.iteration as u32, checkpoint_key: key };
                rt.block_on(client.release(r)).map_err(|s| anyhow::anyhow!("release refused: {}", s.message()))?;
                return Ok(Outcome::Released);
            }
            let iteration = state.iteration;
            let t = Instant::now();
            let losses = renderer.step(&mut state)?;
            metrics::counter!("stylefarm_iterations_total", "device" => ctx.device_label.clone()).increment(1);
            metrics::gauge!("stylefarm_iterations_per_second", "device" => ctx.device_label.clone()).set(1.0 / t.elapsed().as_secs_f64().max(1e-9));
            history.push(LossRecord { iteration, losses, seconds: offset + started.elapsed().as_secs_f64() });
            if let Ok(mut p) = beat.progress.lock() {
                *p = progress(state.iteration, &losses);
            }
            if job.checkpoint_every > 0 && state.iteration % job.checkpoint_every as usize == 0 && state.iteration < iterations {
                let key = save(&state, &history)?;
                let r = pb::HeartbeatRequest {
                    worker_id: ctx.worker_id.clone(),
                    job_id: job.job_id.clone(),
                    fencing_token: token,
                    progress: Some(progress(state.iteration, &losses)),
                    checkpoint_key: key,
                    checkpoint_iteration: state.iteration as u32,
                };
                match rt.block_on(client.heartbeat(r)) {
                    Ok(r) if r.get_ref().cancelled => return Ok(Outcome::Abandoned("cancelled".into())),
                    Err(s) if s.code() == Code::FailedPrecondition => return Ok(Outcome::Abandoned(s.message().to_string())),
                    _ => {}
                }
            }
            if job.snapshot_every > 0 && state.iteration % job.snapshot_every as usize == 0 {
                let (rgb, sw, sh) = pixels::to_rgb(&state.image)?;
                let png = image_io::encode_png(&rgb, sw as u32, sh as u32).map_err(anyhow::Error::msg)?;
                rt.block_on(job_store.put(&format!("snapshot_{:04}.png", state.iteration), png))?;
            }
        }
        // Outputs: the image, the loss log and its plot.
        let last = renderer.evaluate(&state.image)?;
        history.push(LossRecord { iteration: state.iteration, losses: last, seconds: offset + started.elapsed().as_secs_f64() });
        let (rgb, ow, oh) = pixels::to_rgb(&state.image)?;
        let png = image_io::encode_png(&rgb, ow as u32, oh as u32).map_err(anyhow::Error::msg)?;
        rt.block_on(job_store.put("output.png", png))?;
        let log: String = history.iter().map(|r| serde_json::to_string(r).unwrap_or_default() + "\n").collect();
        rt.block_on(job_store.put("losses.jsonl", log.into_bytes()))?;
        let svg = tempfile::Builder::new().suffix(".svg").tempfile()?;
        plot::loss_curves(svg.path(), &history, (params.alpha, params.beta, params.tv_weight), &job.job_id)?;
        rt.block_on(job_store.put("losses.svg", std::fs::read(svg.path())?))?;
        let r = pb::CompleteRequest {
            worker_id: ctx.worker_id.clone(),
            job_id: job.job_id.clone(),
            fencing_token: token,
            output_key: format!("{}/output.png", job.prefix),
            progress: Some(progress(state.iteration, &last)),
        };
        // The coordinator may be restarting: retry while it is unreachable,
        // within the lease's lifetime plus a margin.
        let mut delay = Duration::from_millis(200);
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            match rt.block_on(client.complete(r.clone())) {
                Ok(_) => return Ok(Outcome::Completed),
                Err(s) if s.code() == Code::FailedPrecondition => return Ok(Outcome::Abandoned(format!("completion refused: {}", s.message()))),
                Err(s) if s.code() == Code::Unavailable && Instant::now() < give_up => {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(s) => return Err(anyhow::anyhow!("completion failed: {}", s.message()).into()),
            }
        }
    })();
    beat.done.store(true, Ordering::SeqCst);
    outcome
}
