//! Every change to the farm's state, by name. A handler that changes
//! anything builds one [`Command`] and hands it to the state's owner
//! ([`crate::state::StateHandle::run`]); the writer thread applies it in
//! its own savepoint of a group commit (each `Db` method below is one
//! transaction) and answers once the group is on disk. This enum is the
//! list of what can change the farm: nothing else reaches the writing
//! connection.

use std::sync::Arc;

use stylefarm_proto as pb;
use tokio::sync::oneshot;

use crate::db::sql;
use crate::db::{Answer, Call, CallError, Claim, Db, Leased, Marked, NewCollection, Rules, Tried};
use crate::machine::Event;
use crate::schedule::{Policy, Preemption};

/// Where a command's result goes once its group committed (`Err`: the
/// commit failed, with why).
pub type Reply<T> = oneshot::Sender<Result<T, String>>;

/// What the writer thread calls with the group's commit result.
pub type Settle = Box<dyn FnOnce(Result<(), String>) + Send>;

/// A worker's call about a job, owned, to travel to the state's thread.
#[derive(Debug, Clone)]
pub struct LeaseRef {
    pub worker: String,
    pub job: String,
    pub token: u64,
}

impl LeaseRef {
    pub fn new(worker: &str, job: &str, token: u64) -> Self {
        LeaseRef { worker: worker.to_string(), job: job.to_string(), token }
    }

    pub fn call(&self) -> Call<'_> {
        Call { worker: &self.worker, job: &self.job, token: self.token }
    }
}

/// What an operator does to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerAction {
    /// Finish the job it holds, lease no more.
    Drain,
    /// Lease again (lifts a drain and a quarantine).
    Resume,
    /// Off the list (a lost or stopped worker).
    Forget,
}

/// Every change to the farm's state.
pub enum Command {
    // ------------------------------------------------------ collections --
    /// Submit: a collection and its jobs, queued (its id and job count).
    CreateCollection { collection: NewCollection, reply: Reply<Result<(String, u32), CallError>> },
    /// Cancel every unfinished job of a collection (how many).
    CancelCollection { id: String, reply: Reply<sql::Result<usize>> },
    /// Queue every failed job of a collection again (how many).
    RetryFailed { id: String, reply: Reply<Result<usize, CallError>> },
    /// Pause or resume a collection, or set its priority (false: no such
    /// collection).
    UpdateCollection { id: String, paused: Option<bool>, priority: Option<i32>, reply: Reply<sql::Result<bool>> },
    /// Hide a collection and mark it for deletion (cancelling its jobs
    /// first when asked).
    MarkDeleted { id: String, cancel: bool, reply: Reply<Result<Marked, CallError>> },
    /// The last step of a delete: its rows go, a tombstone stays.
    ForgetCollection { id: String, reply: Reply<sql::Result<()>> },
    // ------------------------------------------------------------- jobs --
    /// Cancel, retry, or re-render with changed parameters (`changes_json`,
    /// the job's keys a person changes; the changed job must fit `largest`,
    /// the largest registered device), one job.
    ActOnJob { id: String, event: Event, changes_json: String, largest: Option<u64>, reply: Reply<Result<String, CallError>> },
    // ------------------------------------------------ workers and leases --
    /// A worker registers (the ids of the dead ones it replaced).
    RegisterWorker { id: String, request: pb::RegisterRequest, rules: Rules, reply: Reply<Result<Vec<String>, CallError>> },
    /// Drain, resume or forget a worker named by id or name (the worker
    /// after).
    ActOnWorker { worker: String, action: WorkerAction, lease_seconds: f64, reply: Reply<Result<pb::WorkerInfo, CallError>> },
    /// A worker says goodbye.
    DeregisterWorker { worker: String, rules: Rules, reply: Reply<Result<(), CallError>> },
    /// The next job for a worker, if any fits: the job of the user whose
    /// turn it is under `policy`.
    Lease { worker: String, rules: Rules, policy: Arc<Policy>, reply: Reply<Result<Option<Leased>, CallError>> },
    /// Progress, and a checkpoint's key when one was written.
    Heartbeat { lease: LeaseRef, request: pb::HeartbeatRequest, checkpoint: Option<String>, rules: Rules, reply: Reply<Result<Answer, CallError>> },
    /// The job is done; its output is at `output_key`.
    Complete { lease: LeaseRef, output_key: String, progress: pb::Progress, rules: Rules, reply: Reply<Result<Answer, CallError>> },
    /// The attempt failed, for a cause.
    Fail { lease: LeaseRef, kind: pb::FailureKind, message: String, rules: Rules, reply: Reply<Result<Answer, CallError>> },
    /// The job is given back, from a checkpoint (key, iteration) if any.
    Release { lease: LeaseRef, checkpoint: Option<(String, u32)>, rules: Rules, reply: Reply<Result<Answer, CallError>> },
    /// Requeue what lapsed (the jobs touched).
    ExpireLeases { rules: Rules, reply: Reply<sql::Result<Vec<String>>> },
    /// Mark the running jobs that queued work outranks, to be given back
    /// at their next checkpoint (those marked, with why).
    Preempt { policy: Arc<Policy>, rules: Rules, min_run: f64, reply: Reply<sql::Result<Vec<Preemption>>> },
    // ---------------------------------------------------- notifications --
    /// Claim the next try of a collection's notification until `until`.
    ClaimNotification { id: String, now: f64, until: f64, delivery: String, reply: Reply<sql::Result<Option<Claim>>> },
    /// How a claimed try went.
    NotificationTried { id: String, delivery: String, tried: Tried, reply: Reply<sql::Result<bool>> },
    // ---------------------------------------------------- bytes stored --
    /// What a collection was measured to hold: its folder's bytes and its
    /// inputs (key, bytes).
    RecordUsage { id: String, folder_bytes: u64, inputs: Vec<(String, u64)>, at: f64, reply: Reply<sql::Result<()>> },
    /// A collection changed in storage unseen: measure it again.
    UsageStale { id: String, reply: Reply<sql::Result<()>> },
    /// An input the deleter removed: no longer counted.
    ForgetStoredInput { key: String, reply: Reply<sql::Result<()>> },
}

/// `result`, sent to `reply` once the group's commit is known.
fn settle<T: Send + 'static>(reply: Reply<T>, result: T) -> Settle {
    Box::new(move |committed| {
        let _ = reply.send(committed.map(|()| result));
    })
}

impl Command {
    /// Applies the change (inside the writer's group); what to tell its
    /// caller once the group commits.
    pub fn apply(self, db: &mut Db) -> Settle {
        match self {
            Command::CreateCollection { collection, reply } => settle(reply, db.create_collection(&collection)),
            Command::CancelCollection { id, reply } => settle(reply, db.cancel(&id)),
            Command::RetryFailed { id, reply } => settle(reply, db.retry_failed(&id)),
            Command::UpdateCollection { id, paused, priority, reply } => settle(reply, db.update_collection(&id, paused, priority)),
            Command::MarkDeleted { id, cancel, reply } => settle(reply, db.mark_deleted(&id, cancel)),
            Command::ForgetCollection { id, reply } => settle(reply, db.forget_collection(&id)),
            Command::ActOnJob { id, event, changes_json, largest, reply } => settle(reply, act_on_job(db, &id, event, &changes_json, largest)),
            Command::RegisterWorker { id, request, rules, reply } => settle(reply, db.register_worker(&id, &request, &rules)),
            Command::ActOnWorker { worker, action, lease_seconds, reply } => settle(reply, act_on_worker(db, &worker, action, lease_seconds)),
            Command::DeregisterWorker { worker, rules, reply } => settle(reply, db.deregister_worker(&worker, &rules)),
            Command::Lease { worker, rules, policy, reply } => settle(reply, db.lease(&worker, &rules, &policy)),
            Command::Heartbeat { lease, request, checkpoint, rules, reply } => settle(reply, db.heartbeat(&lease.call(), &request, checkpoint.as_deref(), &rules)),
            Command::Complete { lease, output_key, progress, rules, reply } => settle(reply, db.complete(&lease.call(), &output_key, &progress, &rules)),
            Command::Fail { lease, kind, message, rules, reply } => settle(reply, db.fail(&lease.call(), kind, &message, &rules)),
            Command::Release { lease, checkpoint, rules, reply } => {
                settle(reply, db.release(&lease.call(), checkpoint.as_ref().map(|(k, i)| (k.as_str(), *i)), &rules))
            }
            Command::ExpireLeases { rules, reply } => settle(reply, db.expire_leases(&rules)),
            Command::Preempt { policy, rules, min_run, reply } => settle(reply, db.preempt(&policy, &rules, min_run)),
            Command::ClaimNotification { id, now, until, delivery, reply } => settle(reply, db.claim_notification(&id, now, until, &delivery)),
            Command::NotificationTried { id, delivery, tried, reply } => settle(reply, db.notification_tried(&id, &delivery, tried)),
            Command::RecordUsage { id, folder_bytes, inputs, at, reply } => settle(reply, db.record_usage(&id, folder_bytes, &inputs, at)),
            Command::UsageStale { id, reply } => settle(reply, db.usage_stale(&id)),
            Command::ForgetStoredInput { key, reply } => settle(reply, db.forget_stored_input(&key)),
        }
    }
}

/// Cancel or retry job `id`; a retry with changes reads the job's
/// parameters in the same transaction that writes the changed ones, so two
/// retries at once cannot both build on the old ones.
fn act_on_job(db: &mut Db, id: &str, event: Event, changes_json: &str, largest: Option<u64>) -> Result<String, CallError> {
    let changed = crate::retry::changed_job(db, id, changes_json, largest)?;
    let event = if event == Event::Retry && changed.is_some() { Event::Rerender } else { event };
    db.act_on_job(id, event, changed.as_ref())
}

/// Drain, resume or forget the worker `named` (an id, or the name it was
/// given); the worker after.
fn act_on_worker(db: &mut Db, named: &str, action: WorkerAction, lease_seconds: f64) -> Result<pb::WorkerInfo, CallError> {
    let id = db.resolve_worker(named)?;
    match action {
        WorkerAction::Drain => db.set_draining(&id, true)?,
        WorkerAction::Resume => db.set_draining(&id, false)?,
        WorkerAction::Forget => db.forget_worker(&id, lease_seconds)?,
    }
    db.worker(&id, lease_seconds)?.ok_or(CallError::NotRegistered(id))
}
