//! The farm's side of a render session (the engine's `Hooks`): the loss
//! log, plot, TensorBoard events, snapshots and previews written into the
//! attempt's folder, checkpoints saved and reported, and the session told
//! to stop when the job is cancelled, the lease is lost, the coordinator
//! asks for the job back (its collection was paused) or the worker
//! shuts down. A checkpoint that cannot be written is logged and skipped:
//! the render goes on.

use std::sync::atomic::Ordering;
use std::time::Instant;

use stylefarm_engine::{pixels, Checkpoint, Control, Hooks, LossRecord, Session};
use stylefarm_proto as pb;
use stylefarm_shared::checkpoints::{self, CheckpointStore};
use stylefarm_shared::image_io;
use stylefarm_shared::plot;
use stylefarm_shared::records::{self, job_files};
use stylefarm_shared::storage::Store;
use stylefarm_shared::tfevents::EventWriter;
use tokio::runtime::Handle;
use tonic::Code;

use super::failure::{Ended, JobError};
use super::folder::{retry_storage, save_log};
use super::lease::{self, LeaseState};
use crate::Worker;

/// Why the session was told to stop.
pub(super) enum Stop {
    Shutdown,
    /// The coordinator asked for the job back (its collection was paused).
    Release,
    Cancelled,
    /// The lease is no longer ours (taken over, or a checkpoint refused).
    Lost(String),
}

/// The farm's side of a session.
pub(super) struct FarmHooks<'a> {
    pub(super) ctx: &'a Worker,
    pub(super) rt: &'a Handle,
    pub(super) job: &'a pb::JobSpec,
    pub(super) token: u64,
    pub(super) beat: &'a LeaseState,
    /// The attempt's folder: outputs, records, snapshots, checkpoints.
    pub(super) job_store: Store,
    pub(super) checkpoints: CheckpointStore,
    pub(super) events: EventWriter<Vec<u8>>,
    pub(super) log: String,
    pub(super) clock: Instant,
    /// The iteration this attempt started from (for the ETA).
    pub(super) first: usize,
    /// The render's iterations (for progress).
    pub(super) iterations: usize,
    pub(super) stopped: Option<Stop>,
}

impl FarmHooks<'_> {
    pub(super) fn record(&mut self, r: &LossRecord) {
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
    pub(super) fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), JobError> {
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

    pub(super) fn write_outputs(&mut self, session: &Session) -> Result<(), JobError> {
        if let Some(last) = session.history().last() {
            self.record(&last.clone());
        }
        self.png(session, job_files::OUTPUT, session.execution().bit_depth)?;
        self.put_records(session)
    }

    /// Reports the job done; the coordinator may be restarting, so
    /// unavailability is retried for a minute.
    /// The attempt's log is written first, so the folder is whole once the
    /// job reads SUCCEEDED (what a user fetches, and what the coordinator
    /// measures as stored, does not change after).
    pub(super) fn complete(&self, last: &LossRecord) -> Result<Ended, JobError> {
        tracing::info!(seconds = self.clock.elapsed().as_secs_f64(), "completed");
        save_log(self.ctx, self.rt, self.job, self.token);
        let r = pb::CompleteRequest {
            worker_id: self.ctx.worker_id.clone(),
            job_id: self.job.job_id.clone(),
            fencing_token: self.token,
            output_name: job_files::OUTPUT.to_string(),
            progress: Some(self.progress(last.iteration, &last.losses)),
        };
        let done = lease::complete(self.ctx, self.rt, r);
        match done {
            Ok(_) => Ok(Ended::Completed),
            Err(s) if s.code() == Code::FailedPrecondition => Ok(Ended::Abandoned(format!("completion refused: {}", s.message()))),
            Err(s) => Err(JobError::Internal(format!("completion failed: {}", s.message()))),
        }
    }

    /// Shutdown: checkpoint where the render is (if it got past its coarse
    /// stages) and give the job back so another worker resumes at once.
    pub(super) fn release(&mut self, session: &Session) -> Result<Ended, JobError> {
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
        tracing::info!(iteration, "checkpointed; giving the job back");
        save_log(self.ctx, self.rt, self.job, self.token);
        let r = pb::ReleaseRequest {
            worker_id: self.ctx.worker_id.clone(),
            job_id: self.job.job_id.clone(),
            fencing_token: self.token,
            checkpoint_iteration: iteration as u32,
            checkpoint_name: name,
        };
        lease::release(self.ctx, self.rt, r).map_err(|s| JobError::Internal(format!("release refused: {}", s.message())))?;
        let reason = self.beat.release_reason.lock().map(|r| r.clone()).unwrap_or_default();
        if reason.starts_with("preempted") {
            if let Ok(mut p) = self.ctx.preempted.lock() {
                *p = Some(format!("job {} at iteration {iteration} ({reason})", self.job.job_id));
            }
        }
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
            } else if self.beat.release.load(Ordering::SeqCst) {
                Some(Stop::Release)
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
            Ok(r) if r.get_ref().release => {
                self.beat.asked_back(&r.get_ref().release_reason);
                self.stopped = Some(Stop::Release);
            }
            Err(s) if lease::lost(&s) => self.stopped = Some(Stop::Lost(s.message().to_string())),
            _ => {}
        }
        Ok(())
    }
}

