//! The lease as the worker holds it: what the render thread and the
//! heartbeat task share ([`LeaseState`]), the heartbeat on its own timer, the one
//! reading of "this lease is no longer ours", and the calls that end a
//! lease (complete, release, fail), each retried while the coordinator is
//! unavailable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stylefarm_proto as pb;
use stylefarm_shared::backoff::Backoff;
use tokio::runtime::Handle;
use tonic::Code;

use crate::Worker;

/// Shared between the render thread and the heartbeat task.
#[derive(Default)]
pub(super) struct LeaseState {
    pub(super) progress: Mutex<pb::Progress>,
    pub(super) cancelled: AtomicBool,
    /// The coordinator asked for the job back (its collection was paused,
    /// or the job preempted): checkpoint and release.
    pub(super) release: AtomicBool,
    /// Why, as the coordinator said.
    pub(super) release_reason: Mutex<String>,
    pub(super) stale: AtomicBool,
    pub(super) done: AtomicBool,
    /// The iteration the attempt resumed from, once known (`u32::MAX`
    /// before).
    pub(super) resumed_from: std::sync::atomic::AtomicU32,
}

impl LeaseState {
    pub(super) fn new() -> Self {
        Self { resumed_from: u32::MAX.into(), ..Default::default() }
    }

    /// The coordinator asked for the job back: said once in the
    /// attempt's log, with why.
    pub(super) fn asked_back(&self, reason: &str) {
        if !self.release.swap(true, Ordering::SeqCst) {
            tracing::info!(reason = %reason, "the coordinator asked for the job back; checkpointing");
            if let Ok(mut r) = self.release_reason.lock() {
                *r = reason.to_string();
            }
        }
    }

    pub(super) fn resumed_from(&self) -> Option<u32> {
        Some(self.resumed_from.load(Ordering::SeqCst)).filter(|&i| i != u32::MAX)
    }
}

/// Whether the coordinator's answer says this lease is no longer ours
/// (taken over, forgotten, or fenced out): the one reading of it, for the
/// heartbeat task and the checkpoint's heartbeat alike.
pub(super) fn lost(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::FailedPrecondition | Code::NotFound | Code::PermissionDenied)
}

/// Heartbeats on a timer until the attempt ends, whatever the render
/// thread is doing.
pub(super) fn spawn_heartbeat(ctx: &Worker, rt: &Handle, job: &pb::JobSpec, token: u64, beat: Arc<LeaseState>) {
    let (mut client, worker_id, job_id, period) = (ctx.client.clone(), ctx.worker_id.clone(), job.job_id.clone(), ctx.heartbeat);
    // In the attempt's span: its warnings belong to the attempt's log.
    rt.spawn(tracing::Instrument::instrument(async move {
        while !beat.done.load(Ordering::SeqCst) {
            let progress = beat.progress.lock().map(|p| *p).unwrap_or_default();
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
                Ok(Ok(resp)) if resp.get_ref().release => beat.asked_back(&resp.get_ref().release_reason),
                Ok(Err(s)) if lost(&s) => beat.stale.store(true, Ordering::SeqCst),
                Ok(Err(s)) => tracing::warn!("heartbeat failed ({}); rendering on", s.message()),
                Err(_) => tracing::warn!("heartbeat got no answer within {patience:?}; rendering on"),
                Ok(Ok(_)) => {}
            }
            tokio::time::sleep(period).await;
        }
    }, tracing::Span::current()));
}

/// Retries `call` while the coordinator is unavailable (restarting, or
/// failing over), until `patience` has passed.
async fn while_unavailable<T, F: std::future::Future<Output = Result<T, tonic::Status>>>(
    patience: Duration,
    call: impl FnMut() -> F,
    on_retry: impl FnMut(&tonic::Status, Duration),
) -> Result<T, tonic::Status> {
    let deadline = tokio::time::Instant::now() + patience;
    Backoff::default().retry(Some(deadline), call, |s| s.code() == Code::Unavailable, on_retry).await
}

/// Reports the job done; the coordinator may be restarting, so
/// unavailability is retried for a minute.
pub(super) fn complete(ctx: &Worker, rt: &Handle, r: pb::CompleteRequest) -> Result<(), tonic::Status> {
    let call = || {
        let (mut c, r) = (ctx.client.clone(), r.clone());
        async move { c.complete(r).await }
    };
    rt.block_on(while_unavailable(Duration::from_secs(60), call, |s, delay| tracing::warn!("completion not delivered ({}); retrying in {delay:?}", s.message()))).map(|_| ())
}

/// Gives the job back (shutdown), retried for ten seconds.
pub(super) fn release(ctx: &Worker, rt: &Handle, r: pb::ReleaseRequest) -> Result<(), tonic::Status> {
    let call = || {
        let (mut c, r) = (ctx.client.clone(), r.clone());
        async move { c.release(r).await }
    };
    rt.block_on(while_unavailable(Duration::from_secs(10), call, |_, _| {})).map(|_| ())
}

/// Reports a failure. Fail is idempotent under the token: retried for a
/// minute while the coordinator is unreachable, so the job is not left to
/// its lease lapsing.
pub(super) fn fail(ctx: &Worker, rt: &Handle, r: pb::FailRequest) -> Result<(), tonic::Status> {
    let call = || {
        let (mut c, r) = (ctx.client.clone(), r.clone());
        async move { c.fail(r).await }
    };
    rt.block_on(while_unavailable(Duration::from_secs(60), call, |_, _| {})).map(|_| ())
}
