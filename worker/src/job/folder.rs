//! The attempt's folder as the worker writes it: storage calls retried
//! through blips (storage still down after that is the worker's fault,
//! not the job's), and the attempt's own log.

use std::time::Duration;

use stylefarm_proto as pb;
use stylefarm_shared::backoff::Backoff;
use tokio::runtime::Handle;

use crate::Worker;

/// Writes what the attempt logged so far to its folder's `worker.log`,
/// paths redacted (best effort: a log that cannot be written never fails
/// a render).
pub(super) fn save_log(ctx: &Worker, rt: &Handle, job: &pb::JobSpec, token: u64) {
    // Its owner reads it: the farm's paths out, as from failure messages.
    let text = stylefarm_shared::redact::paths(&stylefarm_shared::attempt_log::text(&job.job_id, token), &[ctx.store.location()]);
    if !text.is_empty() {
        let _ = rt.block_on(ctx.store.sub(&job.prefix).put(stylefarm_shared::records::job_files::WORKER_LOG, text.into_bytes()));
    }
}

/// Runs a storage call, retrying failures with capped backoff for 30 s:
/// storage that stays down after that is the worker's problem, not the
/// job's.
pub(super) async fn retry_storage<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(op: impl FnMut() -> F) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + STORAGE_PATIENCE;
    Backoff::default().retry(Some(deadline), op, |_| true, |e, delay| tracing::warn!("storage: {e}; retrying in {delay:?}")).await
}

/// How long a storage call is retried before the worker gives up on it.
const STORAGE_PATIENCE: Duration = Duration::from_secs(30);

