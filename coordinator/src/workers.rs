//! The `Workers` service (workers): everything a worker reports is checked
//! before it is stored (names, memory, progress, file names), every call
//! about a job is checked against its lease by the database, and a
//! worker's failure message is stripped of paths before a user reads it.

use std::sync::Arc;

use stylefarm_proto as pb;
use stylefarm_proto::workers_server::Workers;
use tonic::{Request, Response, Status};

use crate::command::{Command, LeaseRef};
use crate::context::State;
use crate::db::Rules;
use crate::paths;
use crate::status::{call_err, storage_err};

/// The `Workers` service (workers).
#[derive(Clone)]
pub struct WorkersService(pub(crate) Arc<State>);

/// Progress is stored as numbers people read: a loss or an ETA that is
/// negative or not a finite number is refused (the worker fails the job as
/// BAD_INPUT instead), and so is an iteration past the iterations. The
/// database checks both against the job's own iterations.
fn check_progress(p: &Option<pb::Progress>) -> Result<(), Status> {
    let Some(p) = p else { return Ok(()) };
    for (name, v) in [("content", p.content), ("style", p.style), ("tv", p.tv), ("total", p.total), ("eta_seconds", p.eta_seconds)] {
        if !v.is_finite() {
            return Err(Status::invalid_argument(format!("progress.{name} is {v}, not a finite number")));
        }
        if v < 0.0 {
            return Err(Status::invalid_argument(format!("progress.{name} is {v}; losses and ETAs are never negative")));
        }
    }
    if p.iteration > p.iterations {
        return Err(Status::invalid_argument(format!("progress.iteration {} is past progress.iterations {}", p.iteration, p.iterations)));
    }
    Ok(())
}

/// A worker's failure message as a job's owner may read it
/// ([`stylefarm_shared::redact::paths`]); the full message stays in the
/// coordinator's log.
pub(crate) fn redact_paths(message: &str, locations: &[&str]) -> String {
    stylefarm_shared::redact::paths(message, locations)
}

/// What a worker says of itself at Register, within [`crate::limits`].
fn check_registration(r: &pb::RegisterRequest) -> Result<(), Status> {
    use crate::limits::*;
    let over = |field: &str, n: usize, most: usize| Err(Status::invalid_argument(format!("{field} is {n} bytes; at most {most}")));
    if r.name.len() > MAX_WORKER_NAME_BYTES {
        return over("name", r.name.len(), MAX_WORKER_NAME_BYTES);
    }
    if r.device_name.len() > MAX_DEVICE_NAME_BYTES {
        return over("device_name", r.device_name.len(), MAX_DEVICE_NAME_BYTES);
    }
    if r.capabilities.len() > MAX_CAPABILITIES || r.capabilities.iter().any(|c| c.len() > MAX_CAPABILITY_BYTES) {
        return Err(Status::invalid_argument(format!("capabilities: at most {MAX_CAPABILITIES} of at most {MAX_CAPABILITY_BYTES} bytes each")));
    }
    if r.memory_bytes > i64::MAX as u64 {
        return Err(Status::invalid_argument(format!("memory_bytes {} is over 2^63 - 1", r.memory_bytes)));
    }
    if !(r.device == "cpu" || r.device.strip_prefix("cuda:").is_some_and(|n| n.parse::<u32>().is_ok())) {
        let shown: String = r.device.chars().take(40).collect();
        return Err(Status::invalid_argument(format!("device `{shown}` is not cpu or cuda:N")));
    }
    stylefarm_proto::labels::Labels::parse(&r.labels).map_err(|e| Status::invalid_argument(format!("labels: {e}")))?;
    Ok(())
}

fn check_file_name(field: &str, name: &str) -> Result<(), Status> {
    if paths::file_name(name) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!("{field} {name:?} is not a file name in the attempt's folder (A-Z a-z 0-9 . _ -, no /)")))
    }
}

impl WorkersService {
    fn rules(&self) -> Rules {
        self.0.config.rules()
    }

    /// The full key of a file an attempt names, after checking the name
    /// and that the lease is the caller's.
    async fn key_in_attempt(&self, lease: &LeaseRef, field: &str, name: &str) -> Result<String, Status> {
        check_file_name(field, name)?;
        let l = lease.clone();
        let folder = self.0.db.read(move |db| db.attempt_folder(&l.call())).await?.map_err(call_err)?;
        Ok(paths::in_attempt(&folder, name))
    }
}

#[tonic::async_trait]
impl Workers for WorkersService {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = request.into_inner();
        check_registration(&r)?;
        let base: String = r.name.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).take(60).collect();
        let id = format!("{}-{}", if base.is_empty() { "worker" } else { &base }, &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let (owned, rules) = (id.clone(), self.rules());
        let replaced = self.0.db.run(|reply| Command::RegisterWorker { id: owned, request: r, rules, reply }).await?.map_err(call_err)?;
        if !replaced.is_empty() {
            tracing::info!(worker = %id, ?replaced, "registered again under its name: the earlier rows are replaced");
        }
        let c = &self.0.config;
        Ok(Response::new(pb::RegisterResponse {
            worker_id: id,
            storage_url: self.0.store.location().to_string(),
            heartbeat_seconds: c.heartbeat_seconds,
            lease_seconds: c.lease_seconds,
            farm_id: self.0.farm_id.clone(),
        }))
    }

    async fn lease(&self, request: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        let r = request.into_inner();
        let (worker, rules, policy) = (r.worker_id.clone(), self.rules(), self.0.config.policy.clone());
        let leased = self.0.db.run(|reply| Command::Lease { worker, rules, policy, reply }).await?.map_err(call_err)?;
        Ok(Response::new(match leased {
            Some(l) => {
                metrics::counter!("stylefarm_leases_total").increment(1);
                tracing::debug!(job = %l.spec.job_id, worker = %r.worker_id, attempt = l.attempt, "leased");
                pb::LeaseResponse { job: Some(l.spec), fencing_token: l.token, attempt: l.attempt }
            }
            None => pb::LeaseResponse::default(),
        }))
    }

    async fn heartbeat(&self, request: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = request.into_inner();
        check_progress(&r.progress)?;
        let lease = LeaseRef::new(&r.worker_id, &r.job_id, r.fencing_token);
        let checkpoint = if r.checkpoint_name.is_empty() { None } else { Some(self.key_in_attempt(&lease, "checkpoint_name", &r.checkpoint_name).await?) };
        let rules = self.rules();
        let answer = self.0.db.run(|reply| Command::Heartbeat { lease, request: r, checkpoint, rules, reply }).await?.map_err(call_err)?;
        let release_reason = answer.release.filter(|_| !answer.cancelled).unwrap_or_default();
        Ok(Response::new(pb::HeartbeatResponse { cancelled: answer.cancelled, release: !release_reason.is_empty(), release_reason }))
    }

    async fn complete(&self, request: Request<pb::CompleteRequest>) -> Result<Response<pb::CompleteResponse>, Status> {
        let r = request.into_inner();
        check_progress(&r.progress)?;
        let lease = LeaseRef::new(&r.worker_id, &r.job_id, r.fencing_token);
        let key = self.key_in_attempt(&lease, "output_name", &r.output_name).await?;
        match self.0.store.size(&key).await {
            Ok(Some(n)) if n > 0 => {}
            Ok(_) => return Err(Status::failed_precondition(format!("the output {} is not in storage; write it before completing", r.output_name))),
            Err(e) => return Err(storage_err("check the output", e)),
        }
        let (progress, rules, output_key) = (r.progress.unwrap_or_default(), self.rules(), key.clone());
        let answer = self.0.db.run(|reply| Command::Complete { lease, output_key: key, progress, rules, reply }).await?.map_err(|e| {
            tracing::warn!(job = %r.job_id, worker = %r.worker_id, "completion refused: {e}");
            call_err(e)
        })?;
        if !answer.repeated {
            metrics::counter!("stylefarm_jobs_completed_total").increment(1);
            tracing::debug!(job = %r.job_id, worker = %r.worker_id, "completed");
            tokio::spawn(prune_checkpoints(self.0.clone(), output_key));
        }
        Ok(Response::new(pb::CompleteResponse {}))
    }

    async fn fail(&self, request: Request<pb::FailRequest>) -> Result<Response<pb::FailResponse>, Status> {
        let r = request.into_inner();
        let kind = pb::FailureKind::try_from(r.kind).map_err(|_| Status::invalid_argument(format!("failure kind {} is not in farm.proto", r.kind)))?;
        let logged: String = r.message.chars().take(2000).collect();
        // The job's owner reads it: no storage location or host path.
        let message = redact_paths(&logged, &[self.0.store.location(), &self.0.config.data_dir.to_string_lossy()]);
        let lease = LeaseRef::new(&r.worker_id, &r.job_id, r.fencing_token);
        let rules = self.rules();
        let answer = self.0.db.run(|reply| Command::Fail { lease, kind, message, rules, reply }).await?.map_err(call_err)?;
        if !answer.repeated {
            metrics::counter!("stylefarm_job_failures_total", "kind" => kind.as_str_name()).increment(1);
            tracing::warn!(job = %r.job_id, worker = %r.worker_id, kind = kind.as_str_name(), "attempt failed: {logged}");
        }
        Ok(Response::new(pb::FailResponse {}))
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let r = request.into_inner();
        let lease = LeaseRef::new(&r.worker_id, &r.job_id, r.fencing_token);
        let checkpoint = if r.checkpoint_name.is_empty() { None } else { Some(self.key_in_attempt(&lease, "checkpoint_name", &r.checkpoint_name).await?) };
        let (iteration, rules) = (r.checkpoint_iteration, self.rules());
        let checkpoint = checkpoint.map(|key| (key, iteration));
        let answer = self.0.db.run(|reply| Command::Release { lease, checkpoint, rules, reply }).await?.map_err(call_err)?;
        if !answer.repeated {
            metrics::counter!("stylefarm_releases_total").increment(1);
            tracing::info!(job = %r.job_id, worker = %r.worker_id, iteration = r.checkpoint_iteration, "released");
        }
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let (worker, rules) = (request.into_inner().worker_id, self.rules());
        let id = worker.clone();
        self.0.db.run(|reply| Command::DeregisterWorker { worker: id, rules, reply }).await?.map_err(call_err)?;
        tracing::info!(%worker, "stopped (deregistered)");
        Ok(Response::new(pb::DeregisterResponse {}))
    }
}

/// A succeeded job's checkpoints, every attempt's, are of no more use
/// (a re-render starts from the init): removed once it succeeds. The
/// output, logs, plots and snapshots stay. In the background; a failure
/// is logged and leaves them. The collection is then measured again.
async fn prune_checkpoints(state: std::sync::Arc<crate::context::State>, output_key: String) {
    use stylefarm_shared::records::job_files::checkpoint_iteration;
    let store = &state.store;
    let Some(job) = crate::paths::job_of_attempt_key(&output_key) else { return };
    let listed = match store.list_all(job).await {
        Ok(listed) => listed,
        Err(e) => return tracing::warn!("listing {job} to remove its checkpoints: {e}"),
    };
    let (mut removed, mut bytes) = (0u64, 0u64);
    for (name, size) in listed {
        let file = name.rsplit('/').next().unwrap_or_default();
        if checkpoint_iteration(file).is_none() {
            continue;
        }
        match store.delete(&format!("{job}/{name}")).await {
            Ok(()) => (removed, bytes) = (removed + 1, bytes + size),
            Err(e) => tracing::warn!("removing checkpoint {job}/{name}: {e}"),
        }
    }
    metrics::counter!("stylefarm_checkpoint_bytes_removed_total").increment(bytes);
    tracing::debug!(job, removed, bytes, "a succeeded job's checkpoints removed");
    if let Some(collection) = crate::paths::collection_of_key(job).map(str::to_string) {
        if let Ok(Err(e)) = state.db.run(|reply| Command::UsageStale { id: collection, reply }).await {
            tracing::warn!("asking for a new measure of what a collection stores: {e}");
        }
    }
}
