//! How an attempt ends and whose fault a failure is: the cause decides
//! what it costs. The job's own (bad input, a loss that left the numbers,
//! an engine error) spends its budget; a device out of memory is worth a
//! try on a larger one; storage that keeps failing after retries is the
//! worker's (`WORKER`), so the job goes back to the queue for free and
//! this worker collects a strike.

use std::time::Instant;

use stylefarm_engine::EngineError;
use stylefarm_proto as pb;
use stylefarm_shared::image_io;
use stylefarm_shared::plot;
use stylefarm_shared::storage::StorageError;
use tokio::runtime::Handle;

use super::folder::save_log;
use super::lease;
use crate::Worker;

/// Why an attempt failed, as the coordinator is told: the cause decides
/// whether the job is retried and who pays for it.
#[derive(Debug)]
pub(super) enum JobError {
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

/// How an attempt ended, when it did not fail.
pub(super) enum Ended {
    Completed,
    /// Cancelled, or the lease was taken over: nothing more to do.
    Abandoned(String),
    /// Shutdown: checkpointed and given back.
    Released,
}

/// Logs how the attempt ended and tells the coordinator of a failure.
pub(super) fn report(ctx: &Worker, rt: &Handle, job: &pb::JobSpec, token: u64, outcome: Result<Ended, JobError>, started: Instant) {
    let (kind, message) = match outcome {
        Ok(Ended::Completed) => {
            // Its "completed" line went into the log before the report.
            metrics::histogram!("stylefarm_render_seconds", "device" => ctx.device_label.clone()).record(started.elapsed().as_secs_f64());
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
    if let Err(s) = lease::fail(ctx, rt, r) {
        tracing::warn!("the coordinator did not take the failure: {}", s.message());
    }
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
}
