//! The collection handlers: read one (whole, or the dashboard's header
//! and a screen of its grid), list them, cancel, retry the failed, pause,
//! resume or reprioritise, delete, and stream one of its objects. Free
//! functions over the one context: the `Farm` service and the dashboard
//! both call them, each after checking what only its own transport
//! carries. Another user's collection is NOT_FOUND, exactly as one that
//! does not exist.

use std::pin::Pin;

use stylefarm_proto as pb;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

use crate::auth::Caller;
use crate::command::Command;
use crate::context::State;
use crate::paging::{page_after, page_token};
use crate::paths;
use crate::status::{call_err, db_err, storage_err};

/// The collection `id` with its jobs, if the caller may see it.
pub(crate) async fn get(state: &State, caller: &Caller, id: &str) -> Result<pb::Collection, Status> {
    let owned = id.to_string();
    let found = state.db.read(move |db| db.collection(&owned)).await?.map_err(db_err)?;
    caller.visible(found, || format!("no collection {id}"))
}

/// NOT_FOUND unless the caller may see collection `id`.
pub(crate) async fn check_visible(state: &State, caller: &Caller, id: &str) -> Result<(), Status> {
    let owned = id.to_string();
    let found = state.db.read(move |db| db.owner(&owned)).await?.map_err(db_err)?;
    caller.visible(found.map(|owner| (owner, ())), || format!("no collection {id}"))
}

/// The collection `id` without its jobs: its shape, counts, columns and
/// bytes stored (the dashboard's header; a collection of 100,000 jobs is
/// not read whole to draw it).
pub(crate) async fn header(state: &State, caller: &Caller, id: &str) -> Result<pb::Collection, Status> {
    let owned = id.to_string();
    let read = state.db.read(move |db| {
        let Some((owner, mut c)) = db.collection_header(&owned)? else { return Ok(None) };
        c.set_counts(db.job_counts(&owned)?);
        c.columns = db.grid_columns(&owned)?;
        Ok::<_, crate::db::sql::Error>(Some((owner, c)))
    });
    caller.visible(read.await?.map_err(db_err)?, || format!("no collection {id}"))
}

/// The jobs of rows `from_row..from_row + rows` of collection `id`'s grid,
/// in order (the dashboard's screen of it).
pub(crate) async fn grid(state: &State, caller: &Caller, id: &str, from_row: u32, rows: u32) -> Result<Vec<pb::Job>, Status> {
    check_visible(state, caller, id).await?;
    let owned = id.to_string();
    state.db.read(move |db| db.grid_rows(&owned, from_row, rows)).await?.map_err(db_err)
}

/// A page of the collections the caller may see (an admin: every one),
/// with the farm's bytes stored in all.
pub(crate) async fn list(state: &State, caller: &Caller, r: pb::ListCollectionsRequest) -> Result<pb::ListCollectionsResponse, Status> {
    let after = page_after(&r.page_token)?;
    let limit = if r.page_size == 0 { 100 } else { r.page_size.min(1000) };
    let owner = (!caller.admin).then_some(caller.owner.clone());
    let read = state.db.read(move |db| Ok::<_, crate::db::sql::Error>((db.collections_page(owner.as_deref(), after, limit)?, db.stored_bytes()?)));
    let ((collections, next), stored_bytes) = read.await?.map_err(db_err)?;
    Ok(pb::ListCollectionsResponse { collections, next_page_token: page_token(next), stored_bytes })
}

/// Cancels every unfinished job of collection `id`; the collection after.
pub(crate) async fn cancel(state: &State, caller: &Caller, id: &str) -> Result<pb::Collection, Status> {
    check_visible(state, caller, id).await?;
    state.db.run(|reply| Command::CancelCollection { id: id.to_string(), reply }).await?.map_err(db_err)?;
    get(state, caller, id).await
}

/// Queues every failed job of collection `id` again; the collection after.
pub(crate) async fn retry_failed(state: &State, caller: &Caller, id: &str) -> Result<pb::Collection, Status> {
    check_visible(state, caller, id).await?;
    let retried = state.db.run(|reply| Command::RetryFailed { id: id.to_string(), reply }).await?.map_err(call_err)?;
    tracing::info!(collection = %id, jobs = retried, "failed jobs retried");
    state.preempt_now.notify_one();
    get(state, caller, id).await
}

/// Pauses or resumes collection `r.collection_id`, or sets its priority;
/// the collection after.
pub(crate) async fn update(state: &State, caller: &Caller, r: pb::UpdateCollectionRequest) -> Result<pb::Collection, Status> {
    let id = r.collection_id.clone();
    check_visible(state, caller, &id).await?;
    let (owned, paused, priority) = (id.clone(), r.paused, r.priority);
    let found = state.db.run(|reply| Command::UpdateCollection { id: owned, paused, priority, reply }).await?.map_err(db_err)?;
    if !found {
        return Err(Status::not_found(format!("no collection {id}")));
    }
    tracing::info!(collection = %id, ?paused, ?priority, "collection updated");
    state.preempt_now.notify_one();
    get(state, caller, &id).await
}

/// Deletes collection `r.collection_id` and what it stored (see
/// [`crate::deleter`]); a deleted one is answered OK again.
pub(crate) async fn delete(state: &State, caller: &Caller, r: pb::DeleteCollectionRequest) -> Result<pb::DeleteCollectionResponse, Status> {
    let id = r.collection_id;
    let owned = id.clone();
    let found = state.db.read(move |db| db.owner_even_deleted(&owned)).await?.map_err(db_err)?;
    caller.visible(found.map(|owner| (owner, ())), || format!("no collection {id}"))?;
    let marked = state.db.run(|reply| Command::MarkDeleted { id: id.clone(), cancel: r.cancel, reply }).await?.map_err(call_err)?;
    let crate::db::Marked::Deleting(since) = marked else {
        return Ok(pb::DeleteCollectionResponse { objects: 0, bytes: 0, finished: true });
    };
    let removed = crate::deleter::pass(state, &id, since).await?;
    tracing::info!(collection = %id, objects = removed.objects, bytes = removed.bytes, finished = removed.finished, "deleted");
    Ok(pb::DeleteCollectionResponse { objects: removed.objects, bytes: removed.bytes, finished: removed.finished })
}

/// A stream of one object's bytes.
pub(crate) type Chunks = Pin<Box<dyn Stream<Item = Result<pb::FetchChunk, Status>> + Send>>;

/// Streams object `r.key` of collection `r.collection_id` in chunks of up
/// to 1 MiB; a key outside the collection's folder is refused by name.
pub(crate) async fn fetch(state: &State, caller: &Caller, r: pb::FetchRequest) -> Result<Chunks, Status> {
    if !paths::readable(&r.collection_id, &r.key) {
        return Err(Status::invalid_argument(format!("key `{}` is not inside collection {}", r.key, r.collection_id)));
    }
    check_visible(state, caller, &r.collection_id).await?;
    match state.store.size(&r.key).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(Status::not_found(format!("collection {} has no object {}", r.collection_id, r.key))),
        Err(e) => return Err(storage_err(&format!("read {}", r.key), e)),
    }
    let (size, pieces) = state.store.get_stream(&r.key).await.map_err(|e| storage_err(&format!("read {}", r.key), e))?;
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(send_chunks(size, pieces, r.key, tx));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// Sends an object in chunks of up to 1 MiB.
async fn send_chunks(size: u64, mut pieces: stylefarm_shared::storage::ByteStream, key: String, tx: mpsc::Sender<Result<pb::FetchChunk, Status>>) {
    const CHUNK: usize = 1 << 20;
    let mut buffer = Vec::with_capacity(CHUNK.min(size as usize));
    let mut first = true;
    loop {
        let next = tokio_stream::StreamExt::next(&mut pieces).await;
        let end = match next {
            Some(Ok(bytes)) => {
                buffer.extend_from_slice(&bytes);
                false
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(storage_err(&format!("read {key}"), e))).await;
                return;
            }
            None => true,
        };
        while buffer.len() >= CHUNK || (end && (!buffer.is_empty() || first)) {
            let rest = buffer.split_off(buffer.len().min(CHUNK));
            let data = std::mem::replace(&mut buffer, rest);
            let chunk = pb::FetchChunk { data, total_bytes: if first { size } else { 0 } };
            first = false;
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
        if end {
            return;
        }
    }
}
