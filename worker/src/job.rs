//! One attempt at one job: heartbeat from the moment of the lease, load the
//! inputs from storage, resume from the recorded checkpoint (or the one
//! before it, if that is damaged), run the engine's session with hooks that
//! do the farm's I/O — checkpoints and snapshots in the attempt's folder,
//! the same loss log, plot, TensorBoard events and graph a local render
//! leaves — then complete, fail with a cause, or release.
//!
//! Whose fault a failure is decides what it costs: the job's own (bad
//! input, a loss that left the numbers, an engine error) spends its budget;
//! storage that keeps failing after retries is the worker's (`WORKER`), so
//! the job goes back to the queue for free and this worker collects a
//! strike. A checkpoint that cannot be written is logged and skipped: the
//! render goes on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stylefarm_engine::session::Resample;
use stylefarm_engine::{
    graph, pixels, Cadence, Checkpoint, Control, DType, EngineError, Execution, Hooks, JobParams, LossRecord, Outcome, RenderParams, Session, Vgg19,
};
use stylefarm_proto as pb;
use stylefarm_shared::backoff::Backoff;
use stylefarm_shared::checkpoints::{self, CheckpointStore};
use stylefarm_shared::image_io::{self, decode_rgb, ImageLimits};
use stylefarm_shared::pictures::Sources;
use stylefarm_shared::records::{self, job_files};
use stylefarm_shared::storage::{StorageError, Store};
use stylefarm_shared::tfevents::EventWriter;
use stylefarm_shared::plot;
use tokio::runtime::Handle;
use tonic::Code;

use crate::Ctx;

/// Why an attempt failed, as the coordinator is told: the cause decides
/// whether the job is retried and who pays for it.
#[derive(Debug)]
enum JobError {
    /// The job itself is bad (its inputs, its parameters, a loss that left
    /// the numbers): never retried.
    BadInput(String),
    /// The device ran out of memory: worth a try on a larger one.
    OutOfMemory(String),
    /// The render went wrong some other way: retried, spending the job's
    /// budget.
    Internal(String),
    /// This worker's storage or device failed, not the job: requeued for
    /// free, a strike against the worker.
    Worker(String),
}

/// Whether an engine message reports an exhausted device: candle's CPU
/// and CUDA paths, and the CUDA driver's own name for it.
fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_lowercase();
    ["out of memory", "out_of_memory", "outofmemory", "memory allocation failed", "cannot allocate memory"].iter().any(|s| m.contains(s))
}

impl From<EngineError> for JobError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        if is_out_of_memory(&message) {
            return JobError::OutOfMemory(message);
        }
        match e {
            EngineError::Param(_) | EngineError::Image(_) | EngineError::NonFinite { .. } => {
                JobError::BadInput(message)
            }
            _ => JobError::Internal(message),
        }
    }
}

impl From<StorageError> for JobError {
    fn from(e: StorageError) -> Self {
        JobError::Worker(e.to_string())
    }
}

impl From<image_io::ImageError> for JobError {
    fn from(e: image_io::ImageError) -> Self {
        JobError::Internal(e.to_string())
    }
}

impl From<plot::PlotError> for JobError {
    fn from(e: plot::PlotError) -> Self {
        JobError::Internal(e.to_string())
    }
}

/// Shared between the render thread and the heartbeat task.
#[derive(Default)]
struct Beat {
    progress: Mutex<pb::Progress>,
    cancelled: AtomicBool,
    stale: AtomicBool,
    done: AtomicBool,
    /// The iteration the attempt resumed from, once known (`u32::MAX`
    /// before).
    resumed_from: std::sync::atomic::AtomicU32,
}

impl Beat {
    fn new() -> Self {
        Self { resumed_from: u32::MAX.into(), ..Default::default() }
    }

    fn resumed_from(&self) -> Option<u32> {
        Some(self.resumed_from.load(Ordering::SeqCst)).filter(|&i| i != u32::MAX)
    }
}

/// Runs one attempt to its end; every failure is reported to the
/// coordinator (nothing is returned: the lease loop just goes on).
pub(crate) fn run(ctx: &Ctx, rt: &Handle, job: pb::JobSpec, token: u64) {
    let started = Instant::now();
    let beat = Arc::new(Beat::new());
    spawn_heartbeat(ctx, rt, &job, token, beat.clone());
    let outcome = attempt(ctx, rt, &job, token, &beat);
    beat.done.store(true, Ordering::SeqCst);
    report(ctx, rt, &job, token, outcome, started);
    // The attempt's log, whole, however it ended.
    save_log(ctx, rt, &job, token);
}

/// Writes what the attempt logged so far to its folder's `worker.log`,
/// paths redacted (best effort: a log that cannot be written never fails
/// a render).
fn save_log(ctx: &Ctx, rt: &Handle, job: &pb::JobSpec, token: u64) {
    // Its owner reads it: the farm's paths out, as from failure messages.
    let text = stylefarm_shared::redact::paths(&stylefarm_shared::attempt_log::text(&job.job_id, token), &[ctx.store.location()]);
    if !text.is_empty() {
        let _ = rt.block_on(ctx.store.sub(&job.prefix).put(stylefarm_shared::records::job_files::WORKER_LOG, text.into_bytes()));
    }
}

/// Logs how the attempt ended and tells the coordinator of a failure.
fn report(ctx: &Ctx, rt: &Handle, job: &pb::JobSpec, token: u64, outcome: Result<Ended, JobError>, started: Instant) {
    let (kind, message) = match outcome {
        Ok(Ended::Completed) => {
            metrics::histogram!("stylefarm_render_seconds", "device" => ctx.device_label.clone()).record(started.elapsed().as_secs_f64());
            tracing::info!(seconds = started.elapsed().as_secs_f64(), "completed");
            return;
        }
        Ok(Ended::Abandoned(why)) => {
            tracing::warn!("abandoned: {why}");
            return;
        }
        Ok(Ended::Released) => {
            tracing::info!("checkpointed and released");
            return;
        }
        Err(JobError::BadInput(m)) => (pb::FailureKind::BadInput, m),
        Err(JobError::OutOfMemory(m)) => (pb::FailureKind::OutOfMemory, m),
        Err(JobError::Internal(m)) => (pb::FailureKind::Internal, m),
        Err(JobError::Worker(m)) => (pb::FailureKind::Worker, m),
    };
    tracing::warn!(kind = kind.as_str_name(), "failed: {message}");
    // The log first: a user who reads of the failure can read why.
    save_log(ctx, rt, job, token);
    let r = pb::FailRequest { worker_id: ctx.worker_id.clone(), job_id: job.job_id.clone(), fencing_token: token, kind: kind as i32, message };
    // Fail is idempotent under the token: retried while the coordinator is
    // unreachable, so the job is not left to its lease lapsing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let sent = rt.block_on(Backoff::default().retry(
        Some(deadline),
        || {
            let (mut c, r) = (ctx.client.clone(), r.clone());
            async move { c.fail(r).await }
        },
        |s| s.code() == Code::Unavailable,
        |_, _| {},
    ));
    if let Err(s) = sent {
        tracing::warn!("the coordinator did not take the failure: {}", s.message());
    }
}

/// Runs a storage call, retrying failures with capped backoff for 30 s:
/// storage that stays down after that is the worker's problem, not the
/// job's.
async fn retry_storage<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(op: impl FnMut() -> F) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + STORAGE_PATIENCE;
    Backoff::default().retry(Some(deadline), op, |_| true, |e, delay| tracing::warn!("storage: {e}; retrying in {delay:?}")).await
}

/// How long a storage call is retried before the worker gives up on it.
const STORAGE_PATIENCE: Duration = Duration::from_secs(30);

/// How an attempt ended, when it did not fail.
enum Ended {
    Completed,
    /// Cancelled, or the lease was taken over: nothing more to do.
    Abandoned(String),
    /// Shutdown: checkpointed and given back.
    Released,
}

/// Heartbeats on a timer until the attempt ends, whatever the render
/// thread is doing.
fn spawn_heartbeat(ctx: &Ctx, rt: &Handle, job: &pb::JobSpec, token: u64, beat: Arc<Beat>) {
    let (mut client, worker_id, job_id, period) = (ctx.client.clone(), ctx.worker_id.clone(), job.job_id.clone(), ctx.heartbeat);
    // In the attempt's span: its warnings belong to the attempt's log.
    rt.spawn(tracing::Instrument::instrument(async move {
        while !beat.done.load(Ordering::SeqCst) {
            let progress = beat.progress.lock().map(|p| p.clone()).unwrap_or_default();
            let r = pb::HeartbeatRequest {
                worker_id: worker_id.clone(),
                job_id: job_id.clone(),
                fencing_token: token,
                progress: Some(progress),
                resumed_from: beat.resumed_from(),
                ..Default::default()
            };
            // A coordinator (or a network) that went silent must not hold
            // the heartbeats up: the render goes on, and the next beat
            // tries again on a connection the keep-alive has checked.
            let patience = (period * 2).max(Duration::from_secs(2));
            match tokio::time::timeout(patience, client.heartbeat(r)).await {
                Ok(Ok(resp)) if resp.get_ref().cancelled => beat.cancelled.store(true, Ordering::SeqCst),
                Ok(Err(s)) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound | Code::PermissionDenied) => beat.stale.store(true, Ordering::SeqCst),
                Ok(Err(s)) => tracing::warn!("heartbeat failed ({}); rendering on", s.message()),
                Err(_) => tracing::warn!("heartbeat got no answer within {patience:?}; rendering on"),
                Ok(Ok(_)) => {}
            }
            tokio::time::sleep(period).await;
        }
    }, tracing::Span::current()));
}

fn attempt(ctx: &Ctx, rt: &Handle, job: &pb::JobSpec, token: u64, beat: &Beat) -> Result<Ended, JobError> {
    let stored = JobParams::from_stored(&job.params_json).map_err(EngineError::from)?;
    let params = stored.render;
    let (w, h) = (job.width as usize, job.height as usize);
    let free = stylefarm_shared::device::usable_memory(&ctx.device);
    let execution = Execution { bit_depth: stored.bit_depth, ..plan(&params, (job.width, job.height), free) };
    if let Some(tile) = execution.tile {
        tracing::info!("{}x{} does not fit the {} free: rendering in tiles of {tile} px, {} kept for pass 2", w, h, free.map_or("?".into(), stylefarm_shared::budget::human), execution.keep_tiles);
    }
    let limits = ImageLimits::default();
    let load = |key: &str, role: &str| -> Result<image::RgbImage, JobError> {
        let bytes = rt.block_on(retry_storage(|| ctx.store.get(key)))?;
        decode_rgb(&bytes, &format!("{role} {key}"), limits).map_err(|e| JobError::BadInput(e.to_string()))
    };
    let sources = Sources {
        content: load(&job.content_key, "content")?,
        styles: job.style_keys.iter().map(|k| load(k, "style")).collect::<Result<_, _>>()?,
        init: None,
    };
    let vgg = Arc::new(Vgg19::new(&ctx.weights, params.pooling, DType::F32)?);
    let mut session = Session::with_execution(vgg, params.clone(), execution, sources.at(w, h, &ctx.device)?, None)?;
    if !job.resume_key.is_empty() {
        resume(ctx, rt, &job.resume_key, &mut session);
    }
    beat.resumed_from.store(session.iteration() as u32, Ordering::SeqCst);

    // Everything this attempt writes goes into its own folder.
    let attempt_store = ctx.store.sub(&job.prefix);
    let mut hooks = FarmHooks {
        ctx,
        rt,
        job,
        token,
        beat,
        job_store: attempt_store.clone(),
        checkpoints: CheckpointStore::new(attempt_store, 2),
        events: EventWriter::in_memory(),
        log: String::new(),
        clock: Instant::now(),
        first: session.iteration(),
        iterations: params.iterations,
        stopped: None,
    };
    for r in session.history() {
        hooks.record(r);
    }
    hooks.put(job_files::GRAPH, graph::dot(&params, w, h)?.into_bytes())?;

    let cadence = Cadence { snapshot_every: job.snapshot_every as usize, checkpoint_every: job.checkpoint_every as usize };
    let resample: Resample<'_> = &|sw, sh| sources.at(sw, sh, &ctx.device);
    match session.run(&mut hooks, cadence, resample)? {
        Outcome::Finished(last) => {
            hooks.write_outputs(&session)?;
            hooks.complete(&last)
        }
        Outcome::Stopped => match hooks.stopped.take() {
            Some(Stop::Shutdown) => hooks.release(&session),
            Some(Stop::Cancelled) => Ok(Ended::Abandoned("cancelled".into())),
            Some(Stop::Lost(why)) => Ok(Ended::Abandoned(why)),
            None => Err(JobError::Internal("the render stopped with no reason given".into())),
        },
    }
}

/// Resumes from `key`, or — when that checkpoint does not read or verify —
/// from the newest sound one beside it; a checkpoint of another render is
/// never used. The render starts over if none fits.
fn resume(ctx: &Ctx, rt: &Handle, key: &str, session: &mut Session) {
    let recorded = rt.block_on(ctx.store.get(key)).map_err(|e| e.to_string()).and_then(|b| Checkpoint::decode(&b, &ctx.device).map_err(|e| e.to_string()));
    let checkpoint = match recorded {
        Ok(ck) => Some(ck),
        Err(e) => {
            tracing::warn!("checkpoint {key} is not usable ({e}); looking for an older one beside it");
            let folder = key.rsplit_once('/').map_or("", |(f, _)| f);
            match rt.block_on(CheckpointStore::new(ctx.store.sub(folder), 2).newest_valid(&ctx.device)) {
                Ok((found, warnings)) => {
                    warnings.iter().for_each(|w| tracing::warn!("{w}"));
                    found
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    None
                }
            }
        }
    };
    match checkpoint.map(|ck| (ck.state.iteration, session.resume(ck))) {
        Some((iteration, Ok(()))) => tracing::info!(iteration, "resuming from checkpoint"),
        Some((_, Err(e))) => tracing::warn!("not resuming: {e}"),
        None => tracing::warn!("no usable checkpoint; starting over"),
    }
}

/// Why the session was told to stop.
enum Stop {
    Shutdown,
    Cancelled,
    /// The lease is no longer ours (taken over, or a checkpoint refused).
    Lost(String),
}

/// The farm's side of a session.
struct FarmHooks<'a> {
    ctx: &'a Ctx,
    rt: &'a Handle,
    job: &'a pb::JobSpec,
    token: u64,
    beat: &'a Beat,
    /// The attempt's folder: outputs, records, snapshots, checkpoints.
    job_store: Store,
    checkpoints: CheckpointStore,
    events: EventWriter<Vec<u8>>,
    log: String,
    clock: Instant,
    /// The iteration this attempt started from (for the ETA).
    first: usize,
    /// The render's iterations (for progress).
    iterations: usize,
    stopped: Option<Stop>,
}

impl FarmHooks<'_> {
    fn record(&mut self, r: &LossRecord) {
        self.log.push_str(&records::log_line(r));
        // Writing to memory cannot fail.
        let _ = records::write_scalars(&mut self.events, r);
    }

    fn progress(&self, iteration: usize, losses: &stylefarm_engine::Losses) -> pb::Progress {
        let iterations = self.iterations;
        let per = self.clock.elapsed().as_secs_f64() / iteration.saturating_sub(self.first).max(1) as f64;
        pb::Progress {
            iteration: iteration as u32,
            iterations: iterations as u32,
            content: losses.content,
            style: losses.style,
            tv: losses.tv,
            total: losses.total,
            eta_seconds: per * iterations.saturating_sub(iteration) as f64,
        }
    }

    /// Puts `bytes` at `name` in the attempt's folder, retrying storage
    /// blips.
    fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), JobError> {
        let store = &self.job_store;
        self.rt.block_on(retry_storage(|| store.put(name, bytes.clone())))?;
        Ok(())
    }

    /// The loss log, its plot and the TensorBoard events as they stand.
    fn put_records(&self, session: &Session) -> Result<(), JobError> {
        let p = session.params();
        let svg = plot::loss_curves(session.history(), (p.alpha, p.beta, p.tv_weight), &self.job.job_id)?;
        self.put(job_files::LOSS_LOG, self.log.clone().into_bytes())?;
        self.put(job_files::LOSS_PLOT, svg.into_bytes())?;
        self.put(&format!("{}/{}", job_files::TENSORBOARD, self.events.file_name()), self.events.bytes().to_vec())
    }

    /// Writes the picture as it stands at `name` with `bits` per channel,
    /// and its preview beside it.
    fn png(&self, session: &Session, name: &str, bits: u8) -> Result<(), JobError> {
        let picture = session.picture()?.ok_or_else(|| JobError::Internal("no image to write".into()))?;
        let (rgb, w, h) = pixels::to_rgb(&picture)?;
        self.put_preview(&rgb, w as u32, h as u32)?;
        // 8 bits: the bytes just made for the preview are the PNG's too.
        let png = if bits == 16 { image_io::encode_picture(&picture, 16, name)? } else { image_io::encode_png(&rgb, w as u32, h as u32, name)? };
        self.put(name, png)
    }

    /// The dashboard's live thumbnail of the image as it stands.
    fn put_preview(&self, rgb: &[u8], w: u32, h: u32) -> Result<(), JobError> {
        let img = image::RgbImage::from_raw(w, h, rgb.to_vec()).ok_or_else(|| JobError::Internal(format!("{} bytes are not a {w}x{h} image", rgb.len())))?;
        let small = stylefarm_shared::sheet::preview(&img, job_files::PREVIEW_SIDE);
        let (pw, ph) = small.dimensions();
        self.put(job_files::PREVIEW, image_io::encode_png(small.as_raw(), pw, ph, job_files::PREVIEW)?)
    }

    /// The preview and the loss log at a checkpoint (cheap: a thumbnail and
    /// text), so the dashboard moves even without snapshots.
    fn put_progress_files(&self, session: &Session) -> Result<(), JobError> {
        let picture = session.picture()?.ok_or_else(|| JobError::Internal("no image to write".into()))?;
        let (rgb, w, h) = pixels::to_rgb(&picture)?;
        self.put_preview(&rgb, w as u32, h as u32)?;
        self.put(job_files::LOSS_LOG, self.log.clone().into_bytes())
    }

    fn write_outputs(&mut self, session: &Session) -> Result<(), JobError> {
        if let Some(last) = session.history().last() {
            self.record(&last.clone());
        }
        self.png(session, job_files::OUTPUT, session.execution().bit_depth)?;
        self.put_records(session)
    }

    /// Reports the job done; the coordinator may be restarting, so
    /// unavailability is retried for a minute.
    fn complete(&self, last: &LossRecord) -> Result<Ended, JobError> {
        let r = pb::CompleteRequest {
            worker_id: self.ctx.worker_id.clone(),
            job_id: self.job.job_id.clone(),
            fencing_token: self.token,
            output_name: job_files::OUTPUT.to_string(),
            progress: Some(self.progress(last.iteration, &last.losses)),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let client = &self.ctx.client;
        let done = self.rt.block_on(Backoff::default().retry(
            Some(deadline),
            || {
                let (mut c, r) = (client.clone(), r.clone());
                async move { c.complete(r).await }
            },
            |s| s.code() == Code::Unavailable,
            |s, delay| tracing::warn!("completion not delivered ({}); retrying in {delay:?}", s.message()),
        ));
        match done {
            Ok(_) => Ok(Ended::Completed),
            Err(s) if s.code() == Code::FailedPrecondition => Ok(Ended::Abandoned(format!("completion refused: {}", s.message()))),
            Err(s) => Err(JobError::Internal(format!("completion failed: {}", s.message()))),
        }
    }

    /// Shutdown: checkpoint where the render is (if it got past its coarse
    /// stages) and give the job back so another worker resumes at once.
    fn release(&mut self, session: &Session) -> Result<Ended, JobError> {
        // Without a checkpoint the job is still given back: the next worker
        // starts from the last one the coordinator recorded.
        let (name, iteration) = match session.checkpoint().filter(|ck| ck.state.iteration > 0).map(|ck| (self.save(&ck), ck.state.iteration)) {
            Some((Ok(name), iteration)) => (name, iteration),
            Some((Err(e), _)) => {
                tracing::warn!("no checkpoint at shutdown: {e:?}");
                (String::new(), 0)
            }
            None => (String::new(), 0),
        };
        let r = pb::ReleaseRequest {
            worker_id: self.ctx.worker_id.clone(),
            job_id: self.job.job_id.clone(),
            fencing_token: self.token,
            checkpoint_iteration: iteration as u32,
            checkpoint_name: name,
        };
        let client = &self.ctx.client;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        self.rt
            .block_on(Backoff::default().retry(
                Some(deadline),
                || {
                    let (mut c, r) = (client.clone(), r.clone());
                    async move { c.release(r).await }
                },
                |s| s.code() == Code::Unavailable,
                |_, _| {},
            ))
            .map_err(|s| JobError::Internal(format!("release refused: {}", s.message())))?;
        Ok(Ended::Released)
    }

    /// Writes a checkpoint into the attempt's folder, retrying storage
    /// blips; returns its file name there.
    fn save(&self, ck: &Checkpoint) -> Result<String, JobError> {
        let t = Instant::now();
        let bytes = self.rt.block_on(retry_storage(|| self.checkpoints.save(ck))).map_err(|e| JobError::Worker(e.to_string()))?;
        metrics::histogram!("stylefarm_checkpoint_seconds").record(t.elapsed().as_secs_f64());
        metrics::histogram!("stylefarm_checkpoint_bytes").record(bytes as f64);
        Ok(checkpoints::name(ck.state.iteration))
    }
}

impl Hooks for FarmHooks<'_> {
    type Error = JobError;

    fn control(&mut self) -> Control {
        if self.stopped.is_none() {
            self.stopped = if self.beat.cancelled.load(Ordering::SeqCst) {
                Some(Stop::Cancelled)
            } else if self.beat.stale.load(Ordering::SeqCst) {
                Some(Stop::Lost("the lease was taken over".into()))
            } else if self.ctx.shutdown.is_cancelled() {
                Some(Stop::Shutdown)
            } else {
                None
            };
        }
        if self.stopped.is_some() {
            Control::Stop
        } else {
            Control::Continue
        }
    }

    fn stage(&mut self, stage: &stylefarm_engine::Stage) -> Result<(), JobError> {
        tracing::info!(scale = stage.scale, width = stage.width, height = stage.height, iterations = stage.iterations, "coarse stage");
        Ok(())
    }

    fn iteration(&mut self, session: &Session, record: &LossRecord) -> Result<(), JobError> {
        let label = self.ctx.device_label.clone();
        metrics::counter!("stylefarm_iterations_total", "device" => label.clone()).increment(1);
        let per_second = (session.iteration() - self.first) as f64 / self.clock.elapsed().as_secs_f64().max(1e-9);
        metrics::gauge!("stylefarm_iterations_per_second", "device" => label).set(per_second);
        self.record(record);
        let progress = self.progress(session.iteration(), &record.losses);
        let finite = [progress.content, progress.style, progress.tv, progress.total, progress.eta_seconds].iter().all(|v| v.is_finite());
        if let (true, Ok(mut p)) = (finite, self.beat.progress.lock()) {
            *p = progress;
        }
        Ok(())
    }

    fn snapshot(&mut self, session: &Session) -> Result<(), JobError> {
        self.png(session, &job_files::snapshot(session.iteration()), 8)?;
        self.put_records(session)
    }

    fn checkpoint(&mut self, session: &Session, ck: Checkpoint) -> Result<(), JobError> {
        if ck.state.iteration >= session.params().iterations {
            return Ok(()); // about to complete: the output is the record
        }
        // A checkpoint that cannot be written costs the time since the last
        // one if the worker dies, nothing if it does not: the render goes on.
        let name = match self.save(&ck) {
            Ok(name) => name,
            Err(e) => {
                tracing::warn!(iteration = ck.state.iteration, "checkpoint not written, rendering on: {e:?}");
                return Ok(());
            }
        };
        if let Err(e) = self.put_progress_files(session) {
            tracing::warn!(iteration = ck.state.iteration, "preview not written: {e:?}");
        }
        let last = session.history().last().map(|r| r.losses).unwrap_or_default();
        let r = pb::HeartbeatRequest {
            worker_id: self.ctx.worker_id.clone(),
            job_id: self.job.job_id.clone(),
            fencing_token: self.token,
            progress: Some(self.progress(session.iteration(), &last)),
            checkpoint_name: name,
            checkpoint_iteration: ck.state.iteration as u32,
            resumed_from: self.beat.resumed_from(),
        };
        save_log(self.ctx, self.rt, self.job, self.token);
        match self.rt.block_on(self.ctx.client.clone().heartbeat(r)) {
            Ok(r) if r.get_ref().cancelled => self.stopped = Some(Stop::Cancelled),
            Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound | Code::PermissionDenied) => {
                self.stopped = Some(Stop::Lost(s.message().to_string()))
            }
            _ => {}
        }
        Ok(())
    }
}

/// How this worker runs the `(w, h)` render with `free` memory: untiled
/// when it fits, else in the largest tiles that do, keeping as many tiles'
/// activations as the rest holds ([`RenderParams::plan`]). A job never
/// chooses its tiling; with no memory figure (a device that cannot say) the
/// render runs untiled.
fn plan(params: &RenderParams, (w, h): (u32, u32), free: Option<u64>) -> Execution {
    params.plan(w, h, free, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_is_recognised_on_every_device() {
        for m in ["CUDA_ERROR_OUT_OF_MEMORY", "cuda error: out of memory", "memory allocation failed", "Cannot allocate memory (os error 12)"] {
            assert!(matches!(JobError::from(EngineError::Internal(m.into())), JobError::OutOfMemory(_)), "{m}");
        }
        assert!(matches!(JobError::from(EngineError::Internal("shape mismatch".into())), JobError::Internal(_)));
        let bad = EngineError::NonFinite { iteration: 3, value: f64::NAN, culprit: "the style loss itself is NaN".into(), lever: "lr" };
        assert!(matches!(JobError::from(bad), JobError::BadInput(_)), "a loss that left the numbers is the job's");
    }

    #[test]
    fn a_worker_tiles_what_its_memory_does_not_hold_and_a_job_cannot_choose() {
        // A job stored with a tiling of its own: dropped, the worker decides.
        let stored = JobParams::from_stored(r#"{"tile": 64, "keep_tiles": 1000000}"#).unwrap();
        let params = stored.render;
        assert_eq!(plan(&params, (3840, 2160), None), Execution::default(), "no memory figure: untiled");
        assert_eq!(plan(&params, (3840, 2160), Some(u64::MAX)), Execution::default(), "it fits: untiled");
        let small = plan(&params, (3840, 2160), Some(4 << 30));
        let tile = small.tile.expect("4 GiB does not hold 4K untiled");
        assert!(tile > 64 && params.peak_bytes(&small, 3840, 2160) <= 4 << 30, "the largest tile that fits, not the job's: {tile}");
        assert!(small.keep_tiles < 1_000_000);
    }
}
