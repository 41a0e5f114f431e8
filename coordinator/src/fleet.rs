//! The operator's actions on workers (`Farm.DrainWorker`, `ResumeWorker`,
//! `ForgetWorker`) and the list they act on. Workers are the farm's, not a
//! user's: with tokens configured, acting on one takes an admin token.

use stylefarm_proto as pb;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::db::CallError;
use crate::context::State;
use crate::paging::{page_after, page_token};
use crate::status::{call_err, db_err};

/// What an operator does to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Finish the job it holds, lease no more.
    Drain,
    /// Lease again (lifts a drain and a quarantine).
    Resume,
    /// Off the list (a lost or stopped worker).
    Forget,
}

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
    let (workers, next) = farm
        .state
        .read(move |db| db.workers_page(after, limit, r.include_gone, lease))
        .await?
        .map_err(db_err)?;
    Ok(pb::ListWorkersResponse {
        workers,
        next_page_token: page_token(next),
    })
}

/// Applies `action` to the worker the request names; the worker after.
pub(crate) async fn act_on_worker(farm: &State,
    request: Request<pb::WorkerRef>,
    action: Action,
) -> Result<Response<pb::WorkerInfo>, Status> {
    if !Caller::of(&request).admin {
        return Err(Status::permission_denied(
            "draining, resuming and forgetting workers takes an admin token",
        ));
    }
    // An id, or the name the worker was given.
    let id = request.into_inner().worker_id;
    let lease = farm.config.rules().lease_seconds;
    let named = id.clone();
    let after = farm
        .state
        .write(move |db| {
            let owned = db.resolve_worker(&named)?;
            match action {
                Action::Drain => db.set_draining(&owned, true)?,
                Action::Resume => db.set_draining(&owned, false)?,
                Action::Forget => db.forget_worker(&owned, lease)?,
            }
            db.worker(&owned, lease)?
                .ok_or_else(|| CallError::NotRegistered(owned.clone()))
        })
        .await?
        .map_err(call_err)?;
    tracing::info!(worker = %id, ?action, "operator action");
    Ok(Response::new(after))
}
