//! The `Farm` service (users): handlers check who is calling and validate
//! the request, then hand one command to the state's owner
//! ([`crate::state::StateHandle`]: writes are group-committed on its
//! thread, reads run on read-only connections) and map each failure to a
//! deliberate status ([`crate::status`]). Submit is long enough for its
//! own module ([`crate::submit`]), Watch has its own route
//! ([`crate::watch`]), retry with changes its parser ([`crate::retry`]),
//! the operator's actions on workers theirs ([`crate::fleet`]): free
//! functions over the one context ([`crate::context::State`]) that this
//! service calls and that never call it back (`tests/tests/modules.rs`
//! checks there is no import circle); the `Workers` service is
//! [`crate::workers`].

use std::pin::Pin;
use std::sync::Arc;

use stylefarm_proto as pb;
use stylefarm_proto::farm_server::Farm;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::context::State;
use crate::fleet::Action;
use crate::paging::{page_after, page_token};
use crate::paths;
use crate::state::ReadKind;
use crate::status::{call_err, db_err, storage_err};

/// The `Farm` service (users).
#[derive(Clone)]
pub struct FarmService(pub(crate) Arc<State>);

impl FarmService {
    /// The collection `id`, if the caller may see it: another user's is
    /// NOT_FOUND, exactly as one that does not exist.
    async fn visible(&self, caller: &Caller, id: &str) -> Result<pb::Collection, Status> {
        self.visible_as(ReadKind::Call, caller, id).await
    }

    /// [`FarmService::visible`], reading as `kind`.
    async fn visible_as(&self, kind: ReadKind, caller: &Caller, id: &str) -> Result<pb::Collection, Status> {
        let owned = id.to_string();
        let found = self.0.state.read_as(kind, move |db| db.collection(&owned)).await?.map_err(db_err)?;
        caller.visible(found, || format!("no collection {id}"))
    }

    /// Cancel or Retry (with `changes_json`, if any) on one job the caller
    /// may see; the job as it is after.
    async fn act_on_job(
        &self,
        caller: Caller,
        id: String,
        event: crate::machine::Event,
        changes_json: &str,
    ) -> Result<Response<pb::Job>, Status> {
        let owned = id.clone();
        let found = self.0.state.read(move |db| db.job(&owned)).await?.map_err(db_err)?;
        caller.visible(found, || format!("no job {id}"))?;
        let changed = if changes_json.is_empty() {
            None
        } else {
            let owned = id.clone();
            let current = self
                .0
                .state
                .read(move |db| db.job_for_retry(&owned))
                .await?
                .map_err(db_err)?;
            let (params, styles, width, height) =
                current.ok_or_else(|| Status::not_found(format!("no job {id}")))?;
            let changed = crate::retry::changed_params(&params, changes_json, styles, (width, height))?;
            // Priced like a submit: a job no registered worker could take
            // is refused, not parked in the queue for good.
            if let (Some(new), Some(largest)) = (&changed, crate::submit::largest_device(&self.0).await?) {
                crate::submit::check_fits(new.min_memory, largest, || format!("job {id} at {width}x{height} with these changes"))?;
            }
            changed
        };
        // A retry with changes may render an ended job again, a succeeded
        // one included.
        let event = if event == crate::machine::Event::Retry && changed.is_some() { crate::machine::Event::Rerender } else { event };
        let owned = id.clone();
        self.0
            .state
            .write(move |db| db.act_on_job(&owned, event, changed.as_ref()))
            .await?
            .map_err(call_err)?;
        let owned = id.clone();
        let detail = self.0.state.read(move |db| db.job(&owned)).await?.map_err(db_err)?;
        detail.and_then(|(_, d)| d.job).map(Response::new).ok_or_else(|| Status::not_found(format!("no job {id}")))
    }

    /// NOT_FOUND unless the caller may see collection `id`.
    pub(crate) async fn check_visible(&self, caller: &Caller, id: &str) -> Result<(), Status> {
        let owned = id.to_string();
        let found = self.0.state.read(move |db| db.owner(&owned)).await?.map_err(db_err)?;
        caller.visible(found.map(|owner| (owner, ())), || format!("no collection {id}"))
    }
}

#[tonic::async_trait]
impl Farm for FarmService {
    async fn submit(&self, request: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        crate::submit::submit_collection(&self.0, request).await
    }

    async fn get_collection(&self, request: Request<pb::CollectionRef>) -> Result<Response<pb::Collection>, Status> {
        let caller = Caller::of(&request);
        Ok(Response::new(self.visible(&caller, &request.into_inner().collection_id).await?))
    }

    async fn list_collections(&self, request: Request<pb::ListCollectionsRequest>) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let after = page_after(&r.page_token)?;
        let limit = if r.page_size == 0 { 100 } else { r.page_size.min(1000) };
        let owner = (!caller.admin).then_some(caller.owner);
        let read = self.0.state.read(move |db| Ok::<_, crate::db::sql::Error>((db.collections_page(owner.as_deref(), after, limit)?, db.stored_bytes()?)));
        let ((collections, next), stored_bytes) = read.await?.map_err(db_err)?;
        Ok(Response::new(pb::ListCollectionsResponse { collections, next_page_token: page_token(next), stored_bytes }))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let after = page_after(&r.page_token)?;
        let limit = if r.page_size == 0 { 1000 } else { r.page_size.min(10_000) };
        self.check_visible(&caller, &r.collection_id).await?;
        let (jobs, next) = self.0.state.read(move |db| db.jobs_page(&r.collection_id, after, limit)).await?.map_err(db_err)?;
        Ok(Response::new(pb::ListJobsResponse { jobs, next_page_token: page_token(next) }))
    }

    type WatchStream = crate::watch::WatchStream;

    async fn watch(&self, request: Request<pb::CollectionRef>) -> Result<Response<Self::WatchStream>, Status> {
        crate::watch::watch_decoded(&self.0, request).await
    }

    async fn delete_collection(&self, request: Request<pb::DeleteCollectionRequest>) -> Result<Response<pb::DeleteCollectionResponse>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let id = r.collection_id;
        let owned = id.clone();
        let found = self.0.state.read(move |db| db.owner_even_deleted(&owned)).await?.map_err(db_err)?;
        caller.visible(found.map(|owner| (owner, ())), || format!("no collection {id}"))?;
        let owned = id.clone();
        let marked = self.0.state.write(move |db| db.mark_deleted(&owned, r.cancel)).await?.map_err(call_err)?;
        let crate::db::Marked::Deleting(since) = marked else {
            return Ok(Response::new(pb::DeleteCollectionResponse { objects: 0, bytes: 0, finished: true }));
        };
        let removed = crate::deleter::pass(&self.0, &id, since).await?;
        tracing::info!(collection = %id, objects = removed.objects, bytes = removed.bytes, finished = removed.finished, "deleted");
        Ok(Response::new(pb::DeleteCollectionResponse { objects: removed.objects, bytes: removed.bytes, finished: removed.finished }))
    }

    async fn cancel(&self, request: Request<pb::CollectionRef>) -> Result<Response<pb::Collection>, Status> {
        let caller = Caller::of(&request);
        let id = request.into_inner().collection_id;
        self.check_visible(&caller, &id).await?;
        let owned = id.clone();
        self.0.state.write(move |db| db.cancel(&owned)).await?.map_err(db_err)?;
        Ok(Response::new(self.visible(&caller, &id).await?))
    }

    type FetchStream = Pin<Box<dyn Stream<Item = Result<pb::FetchChunk, Status>> + Send>>;

    async fn fetch(&self, request: Request<pb::FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        if !paths::readable(&r.collection_id, &r.key) {
            return Err(Status::invalid_argument(format!("key `{}` is not inside collection {}", r.key, r.collection_id)));
        }
        self.check_visible(&caller, &r.collection_id).await?;
        match self.0.store.size(&r.key).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(Status::not_found(format!("collection {} has no object {}", r.collection_id, r.key))),
            Err(e) => return Err(storage_err(&format!("read {}", r.key), e)),
        }
        let (size, pieces) = self.0.store.get_stream(&r.key).await.map_err(|e| storage_err(&format!("read {}", r.key), e))?;
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(send_chunks(size, pieces, r.key, tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn get_job(&self, request: Request<pb::JobRef>) -> Result<Response<pb::JobDetail>, Status> {
        let caller = Caller::of(&request);
        let id = request.into_inner().job_id;
        let owned = id.clone();
        let found = self.0.state.read(move |db| db.job(&owned)).await?.map_err(db_err)?;
        caller.visible(found, || format!("no job {id}")).map(Response::new)
    }

    async fn list_job_files(&self, request: Request<pb::JobRef>) -> Result<Response<pb::ListJobFilesResponse>, Status> {
        let caller = Caller::of(&request);
        let id = request.into_inner().job_id;
        let owned = id.clone();
        let found = self.0.state.read(move |db| db.latest_attempt(&owned)).await?.map_err(db_err)?;
        let (collection, attempt) = caller.visible(found.map(|(c, owner, n)| (owner, (c, n))), || format!("no job {id}"))?;
        let folder = paths::attempt(&collection, &id, attempt.max(1));
        if attempt == 0 {
            return Ok(Response::new(pb::ListJobFilesResponse { attempt, files: Vec::new() }));
        }
        let listed = self.0.store.list_all(&folder).await.map_err(|e| storage_err("list the job's files", e))?;
        let files = listed
            .into_iter()
            .map(|(name, size)| pb::JobFile { key: paths::in_attempt(&folder, &name), name, size_bytes: size })
            .collect();
        Ok(Response::new(pb::ListJobFilesResponse { attempt, files }))
    }

    async fn cancel_job(&self, request: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&request);
        self.act_on_job(
            caller,
            request.into_inner().job_id,
            crate::machine::Event::Cancel,
            "",
        )
        .await
    }

    async fn retry_job(
        &self,
        request: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let id = r.job_id.clone();
        let job = self
            .act_on_job(
                caller,
                r.job_id,
                crate::machine::Event::Retry,
                &r.changes_json,
            )
            .await?;
        if !r.changes_json.trim().is_empty() {
            tracing::info!(job = %id, changes = %r.changes_json, "retried with changes");
        }
        Ok(job)
    }

    async fn update_collection(&self, request: Request<pb::UpdateCollectionRequest>) -> Result<Response<pb::Collection>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let id = r.collection_id.clone();
        self.check_visible(&caller, &id).await?;
        let (owned, paused, priority) = (id.clone(), r.paused, r.priority);
        let found = self.0.state.write(move |db| db.update_collection(&owned, paused, priority)).await?.map_err(db_err)?;
        if !found {
            return Err(Status::not_found(format!("no collection {id}")));
        }
        tracing::info!(collection = %id, ?paused, ?priority, "collection updated");
        Ok(Response::new(self.visible(&caller, &id).await?))
    }

    async fn retry_failed(&self, request: Request<pb::CollectionRef>) -> Result<Response<pb::Collection>, Status> {
        let caller = Caller::of(&request);
        let id = request.into_inner().collection_id;
        self.check_visible(&caller, &id).await?;
        let owned = id.clone();
        let retried = self.0.state.write(move |db| db.retry_failed(&owned)).await?.map_err(call_err)?;
        tracing::info!(collection = %id, jobs = retried, "failed jobs retried");
        Ok(Response::new(self.visible(&caller, &id).await?))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        Ok(Response::new(
            crate::fleet::list_worker_page(&self.0, request.into_inner()).await?,
        ))
    }

    async fn drain_worker(
        &self,
        request: Request<pb::WorkerRef>,
    ) -> Result<Response<pb::WorkerInfo>, Status> {
        crate::fleet::act_on_worker(&self.0, request, Action::Drain).await
    }

    async fn resume_worker(
        &self,
        request: Request<pb::WorkerRef>,
    ) -> Result<Response<pb::WorkerInfo>, Status> {
        crate::fleet::act_on_worker(&self.0, request, Action::Resume).await
    }

    async fn forget_worker(
        &self,
        request: Request<pb::WorkerRef>,
    ) -> Result<Response<pb::WorkerInfo>, Status> {
        crate::fleet::act_on_worker(&self.0, request, Action::Forget).await
    }

    async fn resolve_id(&self, request: Request<pb::IdPrefix>) -> Result<Response<pb::IdMatch>, Status> {
        let caller = Caller::of(&request);
        let prefix = request.into_inner().prefix.to_ascii_lowercase();
        if !(4..=36).contains(&prefix.len()) || !prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(Status::invalid_argument(format!(
                "{:?} is not an id or the start of one: 4 to 36 of 0-9 a-f and -",
                stylefarm_shared::terminal::shown(&prefix)
            )));
        }
        let owned = prefix.clone();
        let found = self.0.state.read(move |db| db.ids_starting(&owned, 20)).await?.map_err(db_err)?;
        let mut seen: Vec<_> = found.into_iter().filter(|(_, _, owner)| caller.may_see(owner)).collect();
        match seen.len() {
            0 => Err(Status::not_found(format!("no collection or job you can see has an id starting with {prefix}"))),
            1 => {
                let (kind, id, _) = seen.remove(0);
                Ok(Response::new(pb::IdMatch { kind: kind.as_str().into(), id }))
            }
            n => Err(Status::invalid_argument(format!("{prefix} starts {n} ids{}; give more of it", if n >= 20 { " or more" } else { "" }))),
        }
    }
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

