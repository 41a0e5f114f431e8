//! The job handlers: read one (with its attempts), list a collection's
//! jobs, list the files of its latest attempt, cancel or retry one (with
//! changed parameters: priced like a submit), and find a collection or
//! job by the start of its id. Free functions over the one context, as
//! [`crate::collections`]'s are; another user's job is NOT_FOUND.

use stylefarm_proto as pb;
use tonic::Status;

use crate::auth::Caller;
use crate::command::Command;
use crate::context::State;
use crate::machine::Event;
use crate::paging::{page_after, page_token};
use crate::paths;
use crate::status::{call_err, db_err, storage_err};

/// Job `id`, its attempts and its parameters, if the caller may see it.
pub(crate) async fn get(state: &State, caller: &Caller, id: &str) -> Result<pb::JobDetail, Status> {
    let owned = id.to_string();
    let found = state.db.read(move |db| db.job(&owned)).await?.map_err(db_err)?;
    let mut detail = caller.visible(found, || format!("no job {id}"))?;
    if detail.job.as_ref().is_some_and(|j| j.state == pb::JobState::Queued as i32) {
        detail.waiting = waiting(state, id).await?;
    }
    Ok(detail)
}

/// Why queued job `id` waits, in a person's words ("" once it is not
/// queued).
async fn waiting(state: &State, id: &str) -> Result<String, Status> {
    let (owned, policy, lease_seconds) = (id.to_string(), state.config.policy.clone(), state.config.rules().lease_seconds);
    let facts = state.db.read(move |db| db.wait_facts(&owned, &policy, lease_seconds)).await?.map_err(db_err)?;
    let tokens = &state.config.tokens;
    Ok(facts.map(|f| crate::schedule::why_waiting(&f, |owner| crate::fleet::user_name(tokens, owner))).unwrap_or_default())
}

/// A page of collection `r.collection_id`'s jobs, in submission order.
pub(crate) async fn list(state: &State, caller: &Caller, r: pb::ListJobsRequest) -> Result<pb::ListJobsResponse, Status> {
    let after = page_after(&r.page_token)?;
    let limit = if r.page_size == 0 { 1000 } else { r.page_size.min(10_000) };
    crate::collections::check_visible(state, caller, &r.collection_id).await?;
    let (jobs, next) = state.db.read(move |db| db.jobs_page(&r.collection_id, after, limit)).await?.map_err(db_err)?;
    Ok(pb::ListJobsResponse { jobs, next_page_token: page_token(next) })
}

/// The files of job `id`'s latest attempt (none before it first ran).
pub(crate) async fn files(state: &State, caller: &Caller, id: &str) -> Result<pb::ListJobFilesResponse, Status> {
    let owned = id.to_string();
    let found = state.db.read(move |db| db.latest_attempt(&owned)).await?.map_err(db_err)?;
    let (collection, attempt) = caller.visible(found.map(|(c, owner, n)| (owner, (c, n))), || format!("no job {id}"))?;
    if attempt == 0 {
        return Ok(pb::ListJobFilesResponse { attempt, files: Vec::new() });
    }
    let folder = paths::attempt(&collection, id, attempt);
    let listed = state.store.list_all(&folder).await.map_err(|e| storage_err("list the job's files", e))?;
    let files = listed.into_iter().map(|(name, size)| pb::JobFile { key: paths::in_attempt(&folder, &name), name, size_bytes: size }).collect();
    Ok(pb::ListJobFilesResponse { attempt, files })
}

/// Job `id`'s attempt folders, newest first (the first attempt's before
/// it ran), if the caller may see it: where its files and previews are.
pub(crate) async fn attempt_folders(state: &State, caller: &Caller, id: &str) -> Result<Vec<String>, Status> {
    let owned = id.to_string();
    let found = state.db.read(move |db| db.latest_attempt(&owned)).await?.map_err(db_err)?;
    let (collection, attempts) = caller.visible(found.map(|(c, owner, n)| (owner, (c, n))), || format!("no job {id}"))?;
    Ok((1..=attempts.max(1)).rev().map(|n| paths::attempt(&collection, id, n)).collect())
}

/// Cancel or Retry (with `changes_json`, if any) on one job the caller may
/// see; the job as it is after. A retry with changes may render an ended
/// job again, a succeeded one included.
pub(crate) async fn act(state: &State, caller: &Caller, id: &str, event: Event, changes_json: &str) -> Result<pb::Job, Status> {
    get(state, caller, id).await?;
    // Changes are priced like a submit: a job no registered worker could
    // take is refused, not parked in the queue for good. The job's own
    // parameters are read, changed and written in one transaction.
    let largest = if changes_json.trim().is_empty() { None } else { crate::submit::largest_device(state).await? };
    let changes_json = changes_json.to_string();
    state.db.run(|reply| Command::ActOnJob { id: id.to_string(), event, changes_json: changes_json.clone(), largest, reply }).await?.map_err(call_err)?;
    if !changes_json.trim().is_empty() {
        tracing::info!(job = %id, changes = %changes_json, "retried with changes");
    }
    state.preempt_now.notify_one();
    get(state, caller, id).await?.job.ok_or_else(|| Status::not_found(format!("no job {id}")))
}

/// The one collection or job the caller may see whose id starts with
/// `prefix` (4 to 36 of 0-9, a-f and -).
pub(crate) async fn resolve_id(state: &State, caller: &Caller, prefix: &str) -> Result<pb::IdMatch, Status> {
    let prefix = prefix.to_ascii_lowercase();
    if !(4..=36).contains(&prefix.len()) || !prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(Status::invalid_argument(format!("{:?} is not an id or the start of one: 4 to 36 of 0-9 a-f and -", stylefarm_shared::terminal::shown(&prefix))));
    }
    let owned = prefix.clone();
    let found = state.db.read(move |db| db.ids_starting(&owned, 20)).await?.map_err(db_err)?;
    let mut seen: Vec<_> = found.into_iter().filter(|(_, _, owner)| caller.may_see(owner)).collect();
    match seen.len() {
        0 => Err(Status::not_found(format!("no collection or job you can see has an id starting with {prefix}"))),
        1 => {
            let (kind, id, _) = seen.remove(0);
            Ok(pb::IdMatch { kind: kind.as_str().into(), id })
        }
        n => Err(Status::invalid_argument(format!("{prefix} starts {n} ids{}; give more of it", if n >= 20 { " or more" } else { "" }))),
    }
}
