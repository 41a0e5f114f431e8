//! One attempt at one job: heartbeat from the moment of the lease
//! ([`lease`]), load the inputs from storage, resume from the recorded
//! checkpoint (or the one before it, if that is damaged), run the engine's
//! session with the farm's hooks ([`hooks`]: checkpoints and snapshots in
//! the attempt's folder, the same loss log, plot, TensorBoard events and
//! graph a local render leaves), then complete, release, or fail with a
//! cause ([`failure`]: whose fault it is decides what it costs). Storage
//! calls are retried through blips ([`folder`]).

mod failure;
mod folder;
mod hooks;
mod lease;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use stylefarm_engine::session::Resample;
use stylefarm_engine::{graph, Cadence, Checkpoint, DType, EngineError, Execution, JobParams, Outcome, RenderParams, Session, Vgg19};
use stylefarm_proto as pb;
use stylefarm_shared::checkpoints::CheckpointStore;
use stylefarm_shared::image_io::{decode_rgb, ImageLimits};
use stylefarm_shared::pictures::Sources;
use stylefarm_shared::records::job_files;
use stylefarm_shared::tfevents::EventWriter;
use tokio::runtime::Handle;

use crate::Worker;
use failure::{Ended, JobError};
use folder::{retry_storage, save_log};
use hooks::{FarmHooks, Stop};
use lease::LeaseState;

/// Runs one attempt to its end; every failure is reported to the
/// coordinator (nothing is returned: the lease loop just goes on).
pub(crate) fn run(ctx: &Worker, rt: &Handle, job: pb::JobSpec, token: u64) {
    let started = Instant::now();
    let beat = Arc::new(LeaseState::new());
    lease::spawn_heartbeat(ctx, rt, &job, token, beat.clone());
    let outcome = attempt(ctx, rt, &job, token, &beat);
    beat.done.store(true, Ordering::SeqCst);
    // A completed, released or failed attempt wrote its log before telling
    // the coordinator (its folder is whole once the job's state says so);
    // an abandoned one tells nobody, so its log is written here.
    let abandoned = matches!(outcome, Ok(Ended::Abandoned(_)));
    failure::report(ctx, rt, &job, token, outcome, started);
    if abandoned {
        save_log(ctx, rt, &job, token);
    }
}

fn attempt(ctx: &Worker, rt: &Handle, job: &pb::JobSpec, token: u64, beat: &LeaseState) -> Result<Ended, JobError> {
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
            // Shutdown, or the coordinator asked for the job back: a
            // checkpoint where the render is, and the lease given back.
            Some(Stop::Shutdown | Stop::Release) => hooks.release(&session),
            Some(Stop::Cancelled) => Ok(Ended::Abandoned("cancelled".into())),
            Some(Stop::Lost(why)) => Ok(Ended::Abandoned(why)),
            None => Err(JobError::Internal("the render stopped with no reason given".into())),
        },
    }
}

/// Resumes from `key`, or — when that checkpoint does not read or verify —
/// from the newest sound one beside it; a checkpoint of another render is
/// never used. The render starts over if none fits.
fn resume(ctx: &Worker, rt: &Handle, key: &str, session: &mut Session) {
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

/// How this worker runs the `(w, h)` render with `free` memory: untiled
/// when it fits, else in the largest tiles that do, keeping as many tiles'
/// activations as the rest holds ([`RenderParams::plan`]). A job never
/// chooses its tiling; with no memory figure (a device that cannot say) the
/// render runs untiled. It plans against all but [`RESERVE`] of `free`:
/// the memory model is an estimate (within 10% of what is measured, by
/// `params/src/memory.rs`' tests), and a pod at its limit is killed, not
/// slowed.
fn plan(params: &RenderParams, (w, h): (u32, u32), free: Option<u64>) -> Execution {
    params.plan(w, h, free.map(|f| f - f / RESERVE), None)
}

/// The share of the free memory a plan leaves unused: one part in this many.
const RESERVE: u64 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_tiles_what_its_memory_does_not_hold_and_a_job_cannot_choose() {
        // A job stored with a tiling of its own: dropped, the worker decides.
        let stored = JobParams::from_stored(r#"{"tile": 64, "keep_tiles": 1000000}"#).unwrap();
        let params = stored.render;
        assert_eq!(plan(&params, (3840, 2160), None), Execution::default(), "no memory figure: untiled");
        assert_eq!(plan(&params, (3840, 2160), Some(u64::MAX)), Execution::default(), "it fits: untiled");
        let small = plan(&params, (3840, 2160), Some(4 << 30));
        let tile = small.tile.expect("4 GiB does not hold 4K untiled");
        assert!(tile > 64 && params.peak_bytes(&small, 3840, 2160) <= (4 << 30) / 10 * 9, "the largest tile that fits with the reserve left, not the job's: {tile}");
        assert!(small.keep_tiles < 1_000_000);
    }
}
