//! Deleting collections from storage: what `Farm.DeleteCollection` starts
//! and a background sweep finishes (a coordinator killed half-way, or a
//! cancelled job whose worker may still write until its lease lapses).
//! The database steps are in `db::deletion`; this removes the objects:
//! everything under the collection's folder, and the inputs no other
//! collection reads.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::command::Command;
use crate::context::State;
use crate::paths;
use crate::status::{db_err, storage_err};

/// What one pass removed.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Removed {
    pub objects: u64,
    pub bytes: u64,
    /// The rows went too: nothing is left to do.
    pub finished: bool,
}

/// How often the sweep looks for deletions to finish.
const SWEEP: Duration = Duration::from_secs(5);

/// One pass over collection `id`, marked for deletion at `marked` (unix
/// seconds): removes what storage holds of it; once no worker can still
/// write there (no job was cancelled mid-lease, or a lease length has
/// passed since the mark), its rows too.
/// Objects that are already gone are no error, so a pass may repeat.
pub(crate) async fn pass(state: &State, id: &str, marked: f64) -> Result<Removed, Status> {
    let mut removed = Removed::default();
    let folder = paths::collection(id);
    let listed = state.store.list_all(&folder).await.map_err(|e| storage_err("list the collection's objects", e))?;
    for (name, size) in listed {
        state.store.delete(&format!("{folder}{name}")).await.map_err(|e| storage_err("delete the collection's objects", e))?;
        removed.objects += 1;
        removed.bytes += size;
    }
    let owned = id.to_string();
    let inputs = state.db.read(move |db| db.inputs_only_of(&owned)).await?.map_err(db_err)?;
    for key in inputs {
        if let Some(size) = state.store.size(&key).await.map_err(|e| storage_err("read an input", e))? {
            state.store.delete(&key).await.map_err(|e| storage_err("delete an input", e))?;
            removed.objects += 1;
            removed.bytes += size;
        }
        state.db.run(|reply| Command::ForgetStoredInput { key, reply }).await?.map_err(db_err)?;
    }
    let owned = id.to_string();
    let writers = state.db.read(move |db| db.writers_may_remain(&owned)).await?.map_err(db_err)?;
    if !writers || crate::db::now() > marked + state.config.rules().lease_seconds {
        state.db.run(|reply| Command::ForgetCollection { id: id.to_string(), reply }).await?.map_err(db_err)?;
        removed.finished = true;
    }
    Ok(removed)
}

/// Marks for deletion the collections that ended more than `days` ago
/// (`--keep-finished-days`), a batch per sweep.
async fn expire(state: &State, days: f64) {
    let before = crate::db::now() - days * 86_400.0;
    let ended = match state.db.read(move |db| db.ended_before(before, 100)).await {
        Ok(Ok(ended)) => ended,
        Ok(Err(e)) => return tracing::warn!("looking for collections past --keep-finished-days: {e}"),
        Err(_) => return,
    };
    for id in ended {
        match state.db.run(|reply| Command::MarkDeleted { id: id.clone(), cancel: false, reply }).await {
            Ok(Ok(_)) => tracing::info!(collection = %id, days, "ended more than --keep-finished-days ago: deleting"),
            Ok(Err(e)) => tracing::warn!(collection = %id, "retention: {e}"),
            Err(_) => {}
        }
    }
}

/// Finishes every deletion marked and not done (and, with
/// `--keep-finished-days`, starts those retention asks for), now and
/// every few seconds, until `stop`.
pub(crate) async fn run(state: Arc<State>, stop: CancellationToken) {
    loop {
        if let Some(days) = state.config.keep_finished_days {
            expire(&state, days).await;
        }
        match state.db.read(|db| db.deletions_due()).await {
            Ok(Ok(due)) => {
                for (id, marked) in due {
                    match pass(&state, &id, marked).await {
                        Ok(r) if r.objects > 0 || r.finished => tracing::info!(collection = %id, objects = r.objects, bytes = r.bytes, finished = r.finished, "deleting"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(collection = %id, "deleting: {}", e.message()),
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!("looking for deletions to finish: {e}"),
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SWEEP) => {}
        }
    }
}
