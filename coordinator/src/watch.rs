//! `Farm.Watch`, served on its own route so that each message is encoded
//! once for every watcher of a collection: the snapshot once per read
//! (watchers that need one at the same time share it, see
//! [`crate::hub::Subscription::snapshot`]) and each merged batch once,
//! then handed to every watcher as the same bytes. The generated `Farm`
//! server would encode every message again for every watcher: 100 watchers
//! of a 20,000-job collection cost it two million job encodings.
//!
//! The wire is the contract's: the same path, request and `WatchEvent`
//! messages (encoded by prost from the generated types), the same
//! interceptor in front, the same statuses. The request is read by tonic;
//! the response is framed here — gRPC's five-byte prefix, then the shared
//! bytes themselves, then the status in the trailers — because tonic's
//! encoder copies every message into its stream's buffer, and a snapshot
//! copied for each of a thousand watchers that do not read it is a
//! thousand copies held.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use prost::Message;
use stylefarm_proto as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::hub::{Batch, Snapshot, Subscription, WatchChanges};
use crate::admission::Permit as WatchPermit;
use crate::context::State;
use crate::status::db_err;
use crate::state::ReadKind;

/// The stream the generated `Farm` trait's `watch` returns.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

/// How long a Watch may wait for its client to take the next message
/// before it is cut off.
pub(crate) const WATCH_SEND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// What a watcher needs of a changed job: what can change (its place and
/// names it has from the snapshot).
pub(crate) fn changed_part(job: &pb::Job) -> pb::Job {
    pb::Job {
        job_id: job.job_id.clone(),
        state: job.state,
        attempts: job.attempts,
        progress: job.progress.clone(),
        worker: job.worker.clone(),
        worker_name: job.worker_name.clone(),
        error: job.error.clone(),
        output_key: job.output_key.clone(),
        started_from: job.started_from,
        failures: job.failures,
        requeues: job.requeues,
        ..Default::default()
    }
}

/// The gRPC path the contract gives Watch.
pub fn path() -> String {
    format!("/{}/Watch", pb::farm_server::SERVICE_NAME)
}

/// A stream of encoded `WatchEvent`s.
pub type EncodedStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// Watch as a tower service of HTTP requests, for the router.
#[derive(Clone)]
pub struct Route {
    farm: Arc<State>,
    max_message_bytes: usize,
}

impl Route {
    pub(crate) fn new(farm: Arc<State>, max_message_bytes: usize) -> Self {
        Self { farm, max_message_bytes }
    }
}

impl<B> Service<http::Request<B>> for Route
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (farm, max) = (self.farm.clone(), self.max_message_bytes);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let decoder = tonic_prost::ProstDecoder::<pb::CollectionRef>::default();
            let mut messages = tonic::codec::Streaming::new_request(decoder, body, None, Some(max));
            let message = match messages.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(Status::invalid_argument("Watch takes one CollectionRef; the request had none").into_http()),
                Err(status) => return Ok(status.into_http()),
            };
            let request = Request::from_http(http::Request::from_parts(parts, message));
            Ok(match watch(&farm, request).await {
                Ok(response) => {
                    let (metadata, stream, _) = response.into_parts();
                    let mut http = http::Response::new(tonic::body::Body::new(Frames { stream, max, next: None, done: false }));
                    *http.headers_mut() = metadata.into_headers();
                    http.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
                    http
                }
                Err(status) => status.into_http(),
            })
        })
    }
}

/// A gRPC response body: each message as its five-byte prefix (not
/// compressed, length big-endian) and then the message's own bytes, shared
/// with every other watcher; at the end the status, in the trailers.
struct Frames {
    stream: EncodedStream,
    max: usize,
    /// The message whose prefix was just sent.
    next: Option<Bytes>,
    done: bool,
}

impl Frames {
    fn end(&mut self, status: Status) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        match status.add_header(&mut trailers) {
            Ok(()) => Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers)))),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if let Some(message) = self.next.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(message))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.stream.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(message))) => {
                let (len, max) = (message.len(), self.max);
                if len > max {
                    return self.end(Status::resource_exhausted(format!(
                        "a Watch message of {len} bytes is over the coordinator's message limit of {max} (--max-request-mb)"
                    )));
                }
                let mut prefix = Vec::with_capacity(5);
                prefix.push(0);
                prefix.extend_from_slice(&(message.len() as u32).to_be_bytes());
                self.next = Some(message);
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(prefix)))))
            }
            Poll::Ready(Some(Err(status))) => self.end(status),
            Poll::Ready(None) => self.end(Status::ok("")),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The same stream, decoded: what the generated `Farm` trait asks of
/// `watch` (for callers in this process; the server routes Watch here).
pub(crate) async fn watch_decoded(farm: &Arc<State>, request: Request<pb::CollectionRef>) -> Result<Response<WatchStream>, Status> {
    let encoded = watch(farm, request).await?.into_inner();
    let decoded = tokio_stream::StreamExt::map(encoded, |m| m.and_then(|bytes| pb::WatchEvent::decode(bytes).map_err(|e| Status::internal(e.to_string()))));
    Ok(Response::new(Box::pin(decoded)))
}

/// Admits the watcher, subscribes it to its collection's merger, takes the
/// snapshot and starts the task that follows the batches.
pub(crate) async fn watch(farm: &Arc<State>, request: Request<pb::CollectionRef>) -> Result<Response<EncodedStream>, Status> {
    let caller = Caller::of(&request);
    // Who the limit counts against: the user, or (no tokens) the address.
    let client = if caller.owner.is_empty() { request.remote_addr().map(|a| a.ip().to_string()).unwrap_or_default() } else { caller.owner.clone() };
    let id = request.into_inner().collection_id;
    let permit = farm.watchers.admit(&client)?;
    // Subscribe before the snapshot: no change between them is missed.
    let subscription = farm.hubs.subscribe(&id);
    let first = snapshot(farm, &subscription, &caller, &id).await?;
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(follow(farm.clone(), caller, id, first, subscription, tx, permit));
    Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
}

/// The collection's snapshot (shared with every watcher that needs one
/// now) if the caller may see it, and the batch it is as of.
async fn snapshot(farm: &Arc<State>, subscription: &Subscription, caller: &Caller, id: &str) -> Result<(Arc<Snapshot>, u64), Status> {
    let not_found = || Status::not_found(format!("no collection {id}"));
    let (snapshot, seq) = subscription
        .snapshot(farm.db.changes(), || async {
            metrics::counter!("stylefarm_watch_snapshot_reads_total").increment(1);
            let owned = id.to_string();
            let read = farm.db.read_as(ReadKind::Snapshot, move |db| db.collection(&owned)).await?.map_err(db_err)?;
            let (owner, collection) = read.ok_or_else(not_found)?;
            // Encoding a large collection takes milliseconds: off the
            // async threads.
            tokio::task::spawn_blocking(move || encode_snapshot(owner, collection)).await.map_err(|e| Status::internal(e.to_string()))
        })
        .await?;
    caller.visible(Some((snapshot.owner.clone(), ())), || format!("no collection {id}"))?;
    Ok((snapshot, seq))
}

fn encode_snapshot(owner: String, collection: pb::Collection) -> Snapshot {
    let mut jobs: Vec<(String, bool)> = collection.jobs.iter().map(|j| (j.job_id.clone(), pb::JobState::ended(j.state))).collect();
    jobs.sort_unstable();
    let event = pb::WatchEvent { event: Some(pb::watch_event::Event::Snapshot(collection)) };
    Snapshot { owner, grpc: event.encode_to_vec().into(), jobs }
}

/// Which of a snapshot's jobs have not ended, as one watcher has heard.
struct Open {
    snapshot: Arc<Snapshot>,
    ended: Vec<bool>,
    open: usize,
}

impl Open {
    fn new(snapshot: Arc<Snapshot>) -> Self {
        let ended: Vec<bool> = snapshot.jobs.iter().map(|(_, e)| *e).collect();
        let open = ended.iter().filter(|e| !**e).count();
        Self { snapshot, ended, open }
    }

    /// The places of `jobs` in the snapshot's list, and whether each ended.
    fn places(&self, jobs: &[Arc<crate::state::JobEvent>]) -> Vec<(usize, bool)> {
        let find = |job_id: &str| self.snapshot.jobs.binary_search_by(|(id, _)| id.as_str().cmp(job_id)).ok();
        jobs.iter().filter_map(|e| find(&e.job.job_id).map(|i| (i, pb::JobState::ended(e.job.state)))).collect()
    }

    fn heard(&mut self, places: &[(usize, bool)]) {
        for &(i, ended) in places {
            if let Some(was) = self.ended.get_mut(i) {
                if *was != ended {
                    *was = ended;
                    if ended {
                        self.open -= 1;
                    } else {
                        self.open += 1;
                    }
                }
            }
        }
    }
}

/// Feeds one Watch: the snapshot, then each batch of merged changes its
/// collection's merger ([`crate::hub`]) hands out (at most ten a second)
/// that is newer than the snapshot, until every job has ended or the client
/// goes away. A watcher that falls behind the batches is sent a fresh
/// snapshot instead of what it missed, so nothing buffers without bound;
/// one that takes nothing for [`WATCH_SEND_PATIENCE`] is cut off.
async fn follow(
    farm: Arc<State>,
    caller: Caller,
    id: String,
    (first, mut as_of): (Arc<Snapshot>, u64),
    mut subscription: Subscription,
    tx: mpsc::Sender<Result<Bytes, Status>>,
    _permit: WatchPermit,
) {
    let send = |bytes: Bytes| {
        let tx = tx.clone();
        async move { matches!(tokio::time::timeout(WATCH_SEND_PATIENCE, tx.send(Ok(bytes))).await, Ok(Ok(()))) }
    };
    let mut open = Open::new(first.clone());
    if !send(first.grpc.clone()).await || open.open == 0 {
        return;
    }
    loop {
        let batch = tokio::select! {
            _ = tx.closed() => return,
            b = subscription.batches.recv() => b,
        };
        let bytes = match batch.as_deref() {
            // Already in the snapshot.
            Ok(b) if b.seq() <= as_of => continue,
            Ok(Batch::Changes { jobs, watch, .. }) => {
                // Encoded, and placed in the job list, once for all watchers.
                let changes = watch.get_or_init(|| WatchChanges { grpc: encode_changes(jobs), places: open.places(jobs) });
                open.heard(&changes.places);
                changes.grpc.clone()
            }
            Ok(Batch::Resync { .. }) | Err(broadcast::error::RecvError::Lagged(_)) => {
                metrics::counter!("stylefarm_watch_resyncs_total").increment(1);
                let Ok((snapshot, seq)) = snapshot(&farm, &subscription, &caller, &id).await else { return };
                as_of = seq;
                open = Open::new(snapshot.clone());
                snapshot.grpc.clone()
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if !send(bytes).await || open.open == 0 {
            return;
        }
    }
}

/// A batch as `WatchEvent { changes }`: what can change of each job.
fn encode_changes(jobs: &[Arc<crate::state::JobEvent>]) -> Bytes {
    let changes = pb::JobChanges { jobs: jobs.iter().map(|e| changed_part(&e.job)).collect() };
    pb::WatchEvent { event: Some(pb::watch_event::Event::Changes(changes)) }.encode_to_vec().into()
}
