//! The operator's actions on workers (`Farm.DrainWorker`, `ResumeWorker`,
//! `ForgetWorker`), the list they act on, and the farm at a glance (the
//! dashboard's farm page). Workers are the farm's, not a user's: with
//! tokens configured, acting on one takes an admin token.

use stylefarm_proto as pb;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::command::{Command, WorkerAction};
use crate::context::State;
use crate::paging::{page_after, page_token};
use crate::status::{call_err, db_err};

pub(crate) async fn list_worker_page(
    farm: &State,
    r: pb::ListWorkersRequest,
) -> Result<pb::ListWorkersResponse, Status> {
    let after = page_after(&r.page_token)?;
    let max = crate::limits::MAX_WORKERS_PAGE;
    let limit = if r.page_size == 0 {
        max
    } else {
        r.page_size.min(max)
    };
    let lease = farm.config.rules().lease_seconds;
    let (workers, next) = farm.db.read(move |db| db.workers_page(after, limit, r.include_gone, lease)).await?.map_err(db_err)?;
    Ok(pb::ListWorkersResponse {
        workers,
        next_page_token: page_token(next),
    })
}

/// The farm at a glance: the workers (the list's first page) with the
/// pace of each one rendering, the farm's jobs by state, attempts that
/// succeeded in the last hour, the last day's failures by cause, and the
/// bytes stored.
pub(crate) async fn summary(farm: &State) -> Result<pb::FarmSummary, Status> {
    let workers = list_worker_page(farm, pb::ListWorkersRequest::default()).await?.workers;
    let read = farm.db.read(|db| Ok::<_, crate::db::sql::Error>((db.farm_summary()?, db.counts()?, db.stored_bytes()?)));
    let (summary, counts, stored_bytes) = read.await?.map_err(db_err)?;
    let running: std::collections::HashSet<&str> = workers.iter().filter(|w| !w.current_job.is_empty()).map(|w| w.worker_id.as_str()).collect();
    let pace = summary
        .iterations_per_second
        .into_iter()
        .filter(|(worker, _)| running.contains(worker.as_str()))
        .map(|(worker_id, iterations_per_second)| pb::WorkerPace { worker_id, iterations_per_second })
        .collect();
    let failures_last_day = summary.failures_last_day.into_iter().map(|(cause, n)| pb::FailureCause { cause, count: n as u32 }).collect();
    Ok(pb::FarmSummary { workers, jobs: Some(counts), done_last_hour: summary.done_last_hour as u32, failures_last_day, pace, now_unix: crate::db::now(), stored_bytes, users: Vec::new() })
}

/// A user as people know them: their token's name, else the owner id
/// ("" is everyone on a farm without tokens).
pub(crate) fn user_name(tokens: &crate::auth::Tokens, owner: &str) -> String {
    tokens.name_of(owner).map(str::to_string).unwrap_or_else(|| owner.to_string())
}

/// Every user with work: their standing against their share and quotas
/// (`you`: the caller's own).
pub(crate) async fn users(farm: &State, caller: &Caller) -> Result<pb::ListUsersResponse, Status> {
    let (queued, running) = farm.db.read(|db| db.work_by_owner()).await?.map_err(db_err)?;
    let users = crate::schedule::standings(&queued, &running, &farm.config.policy)
        .into_iter()
        .map(|s| pb::UserStanding {
            user: user_name(&farm.config.tokens, &s.owner),
            you: s.owner == caller.owner,
            running: s.running,
            queued: s.queued,
            weight: s.weight,
            share: s.share,
            max_running: s.max_running,
            max_queued: s.max_queued,
        })
        .collect();
    Ok(pb::ListUsersResponse { users })
}

/// Applies `action` to the worker the request names; the worker after.
pub(crate) async fn act_on_worker(farm: &State,
    request: Request<pb::WorkerRef>,
    action: WorkerAction,
) -> Result<Response<pb::WorkerInfo>, Status> {
    if !Caller::of(&request).admin {
        return Err(Status::permission_denied(
            "draining, resuming and forgetting workers takes an admin token",
        ));
    }
    // An id, or the name the worker was given.
    let id = request.into_inner().worker_id;
    let lease_seconds = farm.config.rules().lease_seconds;
    let act = |reply| Command::ActOnWorker { worker: id.clone(), action, lease_seconds, reply };
    let after = farm.db.run(act).await?.map_err(call_err)?;
    tracing::info!(worker = %id, ?action, "operator action");
    Ok(Response::new(after))
}
