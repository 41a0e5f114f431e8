//! The dashboard's JSON API: each handler checks what only HTTP carries
//! (the route's id, a query, the body's shape), calls the `Farm` service
//! (or, for what only the page reads — the farm summary, a collection's
//! header, a screen of its grid — the same handler modules it calls:
//! `collections`, `jobs`, `fleet`; never the database), and answers with a
//! message of `farm.proto` as its canonical JSON (the proto's field names,
//! every field present): the page and a script read the contract's own
//! shapes, never a second one written here. The routes and their messages are
//! listed in farm.proto's dashboard section.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State as AxumState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use stylefarm_proto as pb;
use stylefarm_proto::farm_server::Farm;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{as_grpc, bad_request, caller, ApiError, ApiResult, Peer, Web, COOKIE, MAX_GRID_ROWS};
use crate::auth::Caller;
use crate::hub::Batch;
use crate::watch::WATCH_SEND_PATIENCE;

/// A message from its JSON; an error names where in the body it is
/// (`contents[0].data: Invalid symbol 33, offset 0`).
fn from_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let mut reader = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut reader).map_err(|e| {
        let path = e.path().to_string();
        if path == "." { e.inner().to_string() } else { format!("{path}: {}", e.inner()) }
    })
}

// ------------------------------------------------------------- session --

/// The session of a browser signed in as `caller` (None: signed out).
fn web_session(web: &Web, caller: Option<&Caller>) -> pb::WebSession {
    pb::WebSession { auth_required: !web.state.config.tokens.disabled(), signed_in: caller.is_some(), admin: caller.is_some_and(|c| c.admin) }
}

pub(super) async fn session(AxumState(web): AxumState<Web>, headers: HeaderMap) -> Json<pb::WebSession> {
    Json(web_session(&web, caller(&web, &headers).ok().as_ref()))
}

/// What signing in sends: the token (the page's own body, not the farm's).
#[derive(Deserialize)]
pub(super) struct SignIn {
    token: String,
}

/// Checks a token and hands it back as the cookie the page then sends.
pub(super) async fn sign_in(AxumState(web): AxumState<Web>, Json(body): Json<SignIn>) -> ApiResult<Response> {
    let mut headers = HeaderMap::new();
    let value = HeaderValue::try_from(format!("Bearer {}", body.token)).map_err(|_| ApiError(StatusCode::UNAUTHORIZED, "unknown token".into()))?;
    headers.insert(header::AUTHORIZATION, value);
    let who = caller(&web, &headers)?;
    let secure = if web.tls { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000{secure}", body.token);
    let cookie = HeaderValue::try_from(cookie).map_err(|_| bad_request("a token is printable ASCII"))?;
    Ok(([(header::SET_COOKIE, cookie)], Json(web_session(&web, Some(&who)))).into_response())
}

pub(super) async fn sign_out(AxumState(web): AxumState<Web>) -> Response {
    ([(header::SET_COOKIE, format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"))], Json(web_session(&web, None))).into_response()
}

// ---------------------------------------------------------------- farm --

/// The farm at a glance ([`crate::fleet::summary`]): any signed-in user
/// may read it.
pub(super) async fn farm(AxumState(web): AxumState<Web>, headers: HeaderMap) -> ApiResult<Json<pb::FarmSummary>> {
    let caller = caller(&web, &headers)?;
    let mut summary = crate::fleet::summary(&web.state).await?;
    summary.users = crate::fleet::users(&web.state, &caller).await?.users;
    Ok(Json(summary))
}

/// An operator's action on a worker: drain, resume or forget (the `Farm`
/// service checks the admin token).
pub(super) async fn act_on_worker(
    AxumState(web): AxumState<Web>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Json(_): Json<Value>,
) -> ApiResult<Json<pb::WorkerInfo>> {
    let (_, request) = as_grpc(&web, &headers, pb::WorkerRef { worker_id: id })?;
    let w = match action.as_str() {
        "drain" => web.farm.drain_worker(request).await?,
        "resume" => web.farm.resume_worker(request).await?,
        "forget" => web.farm.forget_worker(request).await?,
        _ => return Err(ApiError(StatusCode::NOT_FOUND, format!("no action {action:?} on workers: drain, resume or forget"))),
    };
    Ok(Json(w.into_inner()))
}

// --------------------------------------------------------- collections --

#[derive(Deserialize)]
pub(super) struct PageQuery {
    #[serde(default)]
    page_token: String,
    #[serde(default)]
    page_size: u32,
}

pub(super) async fn list_collections(AxumState(web): AxumState<Web>, headers: HeaderMap, Query(q): Query<PageQuery>) -> ApiResult<Json<pb::ListCollectionsResponse>> {
    let (_, request) = as_grpc(&web, &headers, pb::ListCollectionsRequest { page_size: q.page_size, page_token: q.page_token })?;
    Ok(Json(web.farm.list_collections(request).await?.into_inner()))
}

/// The collection's header: its shape, counts and columns.
pub(super) async fn collection(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Json<pb::Collection>> {
    let who = caller(&web, &headers)?;
    Ok(Json(crate::collections::header(&web.state, &who, &id).await?))
}

#[derive(Deserialize)]
pub(super) struct GridQuery {
    #[serde(default)]
    from_row: u32,
    #[serde(default)]
    rows: Option<u32>,
}

/// One screen of the grid: the jobs of rows `from_row..from_row + rows`
/// (50 unless asked), in order.
pub(super) async fn grid(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(id): Path<String>, Query(q): Query<GridQuery>) -> ApiResult<Json<pb::ListJobsResponse>> {
    let who = caller(&web, &headers)?;
    let rows = q.rows.unwrap_or(50);
    if rows == 0 || rows > MAX_GRID_ROWS {
        return Err(bad_request(format!("rows must be 1..={MAX_GRID_ROWS}, not {rows}")));
    }
    let jobs = crate::collections::grid(&web.state, &who, &id, q.from_row, rows).await?;
    Ok(Json(pb::ListJobsResponse { jobs, next_page_token: String::new() }))
}

/// Server-sent events: `hello` on every connection (with a one-second
/// reconnect delay; the page re-reads what it shows on each hello after
/// the first, so nothing that changed while it was away is missed),
/// `changes` (a `JobChanges`: the jobs that changed, at most ten batches a
/// second), `resync` (changes were lost: read again), a comment every 15 s
/// to keep the connection open; until the client goes or the coordinator
/// stops. Counts against the watcher limits like a `Watch`.
pub(super) async fn events(
    AxumState(web): AxumState<Web>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let who = caller(&web, &headers)?;
    crate::collections::check_visible(&web.state, &who, &id).await?;
    // Who the limit counts against: the user, or (no tokens) the address,
    // as for Watch.
    let client = if who.owner.is_empty() { peer.ip().to_string() } else { who.owner.clone() };
    let permit = web.state.watchers.admit(&client)?;
    let subscription = web.state.hubs.subscribe(&id);
    let stopping = web.stopping.clone();
    let stream = event_stream(subscription.batches, stopping, permit);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

/// The event stream of one browser, fed by a task that follows the
/// collection's merger: each batch becomes one event, sent when the
/// connection takes it. A browser that falls behind by more than the
/// merger keeps is told to resynchronise; nothing else is buffered for it.
fn event_stream(
    mut batches: broadcast::Receiver<Arc<Batch>>,
    stopping: CancellationToken,
    permit: crate::admission::Permit,
) -> impl tokio_stream::Stream<Item = Result<Event, std::convert::Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let _permit = permit;
        // Browsers reconnect a second after losing the stream (not their
        // default three), and re-read what they show on this hello.
        if tx.send(Ok(Event::default().event("hello").data("{}").retry(Duration::from_secs(1)))).await.is_err() {
            return;
        }
        loop {
            let batch = tokio::select! {
                _ = stopping.cancelled() => return,
                _ = tx.closed() => return,
                b = batches.recv() => b,
            };
            let event = match batch.as_deref() {
                Ok(Batch::Changes { jobs: changes, json: encoded, .. }) => {
                    // Encoded once per batch for every browser watching.
                    let data = encoded.get_or_init(|| {
                        let changes = pb::JobChanges { jobs: changes.iter().map(|e| e.job.clone()).collect() };
                        serde_json::to_string(&changes).unwrap_or_else(|_| "{\"jobs\":[]}".into())
                    });
                    Event::default().event("changes").data(data.as_str())
                }
                Ok(Batch::Resync { .. }) | Err(broadcast::error::RecvError::Lagged(_)) => Event::default().event("resync").data("{}"),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            // The same patience as Watch: a browser that takes nothing
            // for that long is cut off rather than waited on.
            let sent = tokio::select! {
                _ = stopping.cancelled() => return,
                sent = tokio::time::timeout(WATCH_SEND_PATIENCE, tx.send(Ok(event))) => sent,
            };
            if !matches!(sent, Ok(Ok(()))) {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

pub(super) async fn cancel_collection(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(id): Path<String>, Json(_): Json<Value>) -> ApiResult<Json<pb::Collection>> {
    let (_, request) = as_grpc(&web, &headers, pb::CollectionRef { collection_id: id })?;
    let mut c = web.farm.cancel(request).await?.into_inner();
    c.jobs.clear();
    Ok(Json(c))
}

/// Pauses or resumes a collection, or sets its priority: the body is an
/// `UpdateCollectionRequest` (its collection is the route's).
pub(super) async fn update_collection(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(id): Path<String>, body: axum::body::Bytes) -> ApiResult<Json<pb::Collection>> {
    let mut message: pb::UpdateCollectionRequest = from_json(&body).map_err(|e| bad_request(format!("the update's JSON is not an UpdateCollectionRequest: {e}")))?;
    if !message.collection_id.is_empty() && message.collection_id != id {
        return Err(bad_request(format!("the body names collection {} but the route collection {id}", message.collection_id)));
    }
    message.collection_id = id;
    let (_, request) = as_grpc(&web, &headers, message)?;
    let mut c = web.farm.update_collection(request).await?.into_inner();
    c.jobs.clear();
    Ok(Json(c))
}

#[derive(Deserialize)]
pub(super) struct DeleteQuery {
    #[serde(default)]
    cancel: bool,
}

/// Deletes a collection and what it stored (`?cancel=true`: cancels its
/// unfinished jobs first), as `DeleteCollection` does.
pub(super) async fn delete_collection(
    AxumState(web): AxumState<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Json<pb::DeleteCollectionResponse>> {
    let (_, request) = as_grpc(&web, &headers, pb::DeleteCollectionRequest { collection_id: id, cancel: q.cancel })?;
    Ok(Json(web.farm.delete_collection(request).await?.into_inner()))
}

pub(super) async fn retry_failed(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(id): Path<String>, Json(_): Json<Value>) -> ApiResult<Json<pb::Collection>> {
    let (_, request) = as_grpc(&web, &headers, pb::CollectionRef { collection_id: id })?;
    let mut c = web.farm.retry_failed(request).await?.into_inner();
    c.jobs.clear();
    Ok(Json(c))
}

/// Submits a `SubmitRequest` (its canonical JSON: images' bytes base64,
/// each variant a JSON object in a string) through the `Farm` service's
/// own handler. The body (up to the submit limit, read only once the guard
/// has checked the token) is parsed on the blocking threads, within the
/// caller's place among the submits being read, which the handler then
/// keeps.
pub(super) async fn submit(
    AxumState(web): AxumState<Web>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<pb::SubmitResponse>> {
    let json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError(StatusCode::UNSUPPORTED_MEDIA_TYPE, "a submit is a JSON body (Content-Type: application/json)".into()));
    }
    let who = caller(&web, &headers)?;
    let client = if who.owner.is_empty() { peer.ip().to_string() } else { who.owner.clone() };
    let place = Arc::new(web.state.submits.admit(&client)?);
    let parsed = web.state.work.run(move || from_json::<pb::SubmitRequest>(&body)).await?;
    // A body that is not a SubmitRequest is bad input (400) like any other.
    let message = parsed.map_err(|e| bad_request(format!("the submit's JSON is not a SubmitRequest: {e}")))?;
    let (_, mut request) = as_grpc(&web, &headers, message)?;
    request.extensions_mut().insert(place);
    Ok(Json(web.farm.submit(request).await?.into_inner()))
}

// ----------------------------------------------------------------- jobs --

/// The one collection or job the caller may see whose id starts with
/// `prefix` (at least 4 characters, as git asks); 404 when none does, 400
/// naming how many when several do.
pub(super) async fn resolve_id(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(prefix): Path<String>) -> ApiResult<Json<pb::IdMatch>> {
    let (_, request) = as_grpc(&web, &headers, pb::IdPrefix { prefix })?;
    Ok(Json(web.farm.resolve_id(request).await?.into_inner()))
}

/// A job, its attempts and its parameters.
pub(super) async fn job(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Json<pb::JobDetail>> {
    let (_, request) = as_grpc(&web, &headers, pb::JobRef { job_id: id })?;
    Ok(Json(web.farm.get_job(request).await?.into_inner()))
}

/// The files of the job's latest attempt.
pub(super) async fn job_files(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Json<pb::ListJobFilesResponse>> {
    let (_, request) = as_grpc(&web, &headers, pb::JobRef { job_id: id })?;
    Ok(Json(web.farm.list_job_files(request).await?.into_inner()))
}

pub(super) async fn cancel_job(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(id): Path<String>, Json(_): Json<Value>) -> ApiResult<Json<pb::Job>> {
    let (_, request) = as_grpc(&web, &headers, pb::JobRef { job_id: id })?;
    Ok(Json(web.farm.cancel_job(request).await?.into_inner()))
}

/// A retry's body is a `RetryJobRequest` (`{}` retries as it was;
/// `changes_json` holds the parameters to change); its job is the route's.
pub(super) async fn retry_job(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(id): Path<String>, body: axum::body::Bytes) -> ApiResult<Json<pb::Job>> {
    let mut message: pb::RetryJobRequest = from_json(&body).map_err(|e| bad_request(format!("the retry's JSON is not a RetryJobRequest: {e}")))?;
    if !message.job_id.is_empty() && message.job_id != id {
        return Err(bad_request(format!("the body names job {} but the route job {id}", message.job_id)));
    }
    message.job_id = id;
    let (_, request) = as_grpc(&web, &headers, message)?;
    Ok(Json(web.farm.retry_job(request).await?.into_inner()))
}
