//! Bytes stored: a sweep that measures, by listing storage, what each
//! collection holds — its folder (outputs, checkpoints, logs, previews)
//! and the inputs it reads — and records it (`db::usage`), for `status`,
//! the page and `/metrics`. Workers write to storage directly, so the
//! coordinator learns sizes only by looking; it looks again where
//! something may have changed them, not at every collection every time.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::command::Command;
use crate::context::State;
use crate::paths;

/// How often the sweep looks for collections to measure.
const SWEEP: Duration = Duration::from_secs(3);

/// A collection with a running job is measured again at most this often
/// (its checkpoints grow and go while it runs).
const RUNNING_EVERY: f64 = 60.0;

/// At most this many collections are measured per pass.
const PER_PASS: u32 = 32;

/// What collection `id` holds in storage now: its folder's bytes, and the
/// bytes of each of its inputs kept in the farm's storage (an input read
/// from an allowed URL prefix is someone else's storage, and a deleted
/// one counts nothing).
async fn measure(state: &State, id: &str) -> Result<(u64, Vec<(String, u64)>), String> {
    let folder = state.store.list_all(&paths::collection(id)).await.map_err(|e| e.to_string())?;
    let folder_bytes = folder.iter().map(|(_, size)| size).sum();
    let owned = id.to_string();
    let keys = match state.db.read(move |db| db.inputs_of(&owned)).await {
        Ok(Ok(keys)) => keys,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(e) => return Err(e.message().to_string()),
    };
    let mut inputs = Vec::new();
    for key in keys.into_iter().filter(|k| paths::is_input(k)) {
        if let Some(size) = state.store.size(&key).await.map_err(|e| e.to_string())? {
            inputs.push((key, size));
        }
    }
    Ok((folder_bytes, inputs))
}

/// One pass: measures the collections due (see `Db::usage_due`) and
/// records what each holds. Returns when it began (what the next pass
/// asks about attempts ended since).
async fn pass(state: &State, ended_since: f64) -> f64 {
    let began = crate::db::now();
    let due = match state.db.read(move |db| db.usage_due(ended_since, began - RUNNING_EVERY, PER_PASS)).await {
        Ok(Ok(due)) => due,
        Ok(Err(e)) => {
            tracing::warn!("looking for collections to measure: {e}");
            return ended_since;
        }
        Err(_) => return ended_since,
    };
    for id in due {
        let at = crate::db::now();
        match measure(state, &id).await {
            Ok((folder, inputs)) => {
                let record = |reply| Command::RecordUsage { id: id.clone(), folder_bytes: folder, inputs, at, reply };
                if let Ok(Err(e)) = state.db.run(record).await {
                    tracing::warn!(collection = %id, "recording what it stores: {e}");
                }
            }
            Err(e) => tracing::warn!(collection = %id, "measuring what it stores: {e}"),
        }
    }
    began
}

/// Measures now and every few seconds, until `stop`. A (re)started
/// coordinator looks back one minute for ended attempts; collections
/// never measured are found by their own index.
pub(crate) async fn run(state: Arc<State>, stop: CancellationToken) {
    let mut since = crate::db::now() - 60.0;
    loop {
        since = pass(&state, since).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SWEEP) => {}
        }
    }
}
