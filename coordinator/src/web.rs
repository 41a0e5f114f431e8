//! The dashboard: a web page served by the coordinator on its own HTTP port
//! (`--http-listen`), from the same process and the same state as the gRPC
//! API. Its assets (`web/`) are compiled into the binary; its JSON API is a
//! thin translation of the `Farm` service — every action calls the same
//! handler a gRPC client reaches, so a submit from the browser gets the
//! same validation and the same messages as `farmctl submit` — plus the
//! reads only a page needs (one screen of the grid, the farm's summary, a
//! job's files and live preview). Live updates are server-sent events fed
//! by the collection's merger ([`crate::hub`]), the stream `Watch` follows;
//! they count against the same watcher limits.
//!
//! Authentication is the gRPC API's: a user token, sent as
//! `Authorization: Bearer …` or kept by the browser in an HttpOnly,
//! SameSite=Strict cookie that `POST /api/session` sets once the token is
//! checked. A user sees their own collections, an admin every one, and a
//! collection one may not see is 404, as over gRPC. Every state-changing
//! call is a POST with a JSON body, which a cross-site form cannot send.
//!
//! Before any handler runs, [`guard`] checks the token of every API route
//! (but the session's own) and where the request comes from, so no body is
//! read for a stranger; bodies are capped per route (a submit's images,
//! everything else [`MAX_SMALL_BODY_BYTES`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State as AxumState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use stylefarm_proto as pb;
use stylefarm_proto::farm_server::Farm;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

use crate::auth::Caller;
use crate::hub::Batch;
use crate::limits::MAX_SMALL_BODY_BYTES;
use crate::paths;
use crate::context::State;
use crate::service::FarmService;
use crate::status::db_err;
use crate::watch::WATCH_SEND_PATIENCE;

/// The cookie that keeps a browser's token.
const COOKIE: &str = "stylefarm_token";

/// Most rows of the grid one request may ask for.
const MAX_GRID_ROWS: u32 = 500;

/// The page and its assets, compiled in.
const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");
const FAVICON_SVG: &str = include_str!("../web/favicon.svg");

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct Web {
    farm: FarmService,
    state: Arc<State>,
    /// Cookies get `Secure` when the page is served over TLS.
    tls: bool,
    /// Cancelled when the coordinator stops: event streams end with it.
    stopping: CancellationToken,
}

/// The dashboard's routes.
pub(crate) fn router(state: Arc<State>, tls: bool, stopping: CancellationToken) -> Router {
    // A submit carries its images base64 in JSON: 4/3 of the gRPC limit.
    let submit_limit = state.config.max_message_bytes / 3 * 4 + (64 << 10);
    let web = Web { farm: FarmService(state.clone()), state, tls, stopping };
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
        .route("/favicon.svg", get(|| async { asset("image/svg+xml", FAVICON_SVG) }))
        .route("/api/session", get(session).post(sign_in).delete(sign_out))
        .route("/api/farm", get(farm))
        .route("/api/workers/{id}/{action}", post(act_on_worker))
        .route("/api/collections", get(list_collections).post(submit).layer(DefaultBodyLimit::max(submit_limit)))
        .route("/api/collections/{id}", get(collection))
        .route("/api/collections/{id}/grid", get(grid))
        .route("/api/collections/{id}/events", get(events))
        .route("/api/collections/{id}/cancel", post(cancel_collection))
        .route("/api/collections/{id}/retry-failed", post(retry_failed))
        .route("/api/collections/{id}/zip", get(zip))
        .route("/api/ids/{prefix}", get(resolve_id))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/cancel", post(cancel_job))
        .route("/api/jobs/{id}/retry", post(retry_job))
        .route("/api/jobs/{id}/preview", get(preview))
        .route("/api/jobs/{id}/files/{*name}", get(job_file))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such page or API route".into()) })
        .layer(DefaultBodyLimit::max(MAX_SMALL_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(web.clone(), guard))
        .with_state(web)
}

/// Runs before every route, before any body is read: the request must come
/// from a name this page may be reached by (see [`check_origin`]), and an
/// API call must carry a token the `Farm` service takes (all but
/// `/api/session`, which signs in and says whether one is needed).
async fn guard(AxumState(web): AxumState<Web>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Err(refused) = check_origin(!web.state.config.tokens.disabled(), request.method(), request.headers()) {
        return refused.into_response();
    }
    let path = request.uri().path();
    if path.starts_with("/api/") && path != "/api/session" {
        if let Err(refused) = caller(&web, request.headers()) {
            return refused.into_response();
        }
    }
    next.run(request).await
}

/// Where a request may come from. Without tokens anyone who reaches the
/// port is trusted, so the `Host` must be a loopback name or an IP address:
/// a page on another site that has its own domain resolve to this machine
/// (DNS rebinding) sends that domain as its `Host` and is refused. A
/// request that changes state and names its `Origin` (every browser does)
/// must name this same host, tokens or not.
fn check_origin(tokens: bool, method: &axum::http::Method, headers: &HeaderMap) -> ApiResult<()> {
    let forbidden = |why: String| ApiError(StatusCode::FORBIDDEN, why);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !tokens && !host.is_empty() && !local_host(host) {
        let shown: String = host.chars().take(80).collect();
        return Err(forbidden(format!("host `{shown}` is not a loopback name or an address; without tokens the dashboard answers only those")));
    }
    let changes_state = !matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS);
    if let (true, Some(origin)) = (changes_state, headers.get(header::ORIGIN)) {
        let origin = origin.to_str().unwrap_or("null");
        let same = origin.split_once("://").is_some_and(|(_, rest)| !host.is_empty() && rest.eq_ignore_ascii_case(host));
        if !same {
            let shown: String = origin.chars().take(80).collect();
            return Err(forbidden(format!("a request from `{shown}` may not change this farm; use the dashboard's own page")));
        }
    }
    Ok(())
}

/// `localhost`, a name under `.localhost`, or an IP address, with or
/// without a port.
fn local_host(host: &str) -> bool {
    let name = if let Some(v6) = host.strip_prefix('[') {
        return v6.split_once(']').is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok()).map_or(host, |(name, _)| name)
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// One embedded asset, with headers that keep the page to its own origin.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; frame-ancestors 'none'"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// A failed call: its HTTP status and a message for the user, as JSON
/// `{"error": …}`.
#[derive(Debug)]
pub(crate) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<Status> for ApiError {
    /// The gRPC handlers' deliberate statuses, as HTTP says them.
    fn from(s: Status) -> Self {
        ApiError(crate::status::http(s.code()), s.message().to_string())
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

type ApiResult<T> = Result<T, ApiError>;

/// The token a request carries: its `Authorization` header, else the cookie.
fn token_of(headers: &HeaderMap) -> Option<String> {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::to_string);
    bearer.or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| kv.trim().strip_prefix(COOKIE).and_then(|rest| rest.strip_prefix('=')).map(str::to_string))
            .filter(|t| !t.is_empty())
    })
}

/// A gRPC request as the interceptor would have passed it on: the token in
/// its metadata, checked, and its caller in its extensions.
fn as_grpc<T>(web: &Web, headers: &HeaderMap, message: T) -> ApiResult<(Caller, Request<T>)> {
    let mut probe = Request::new(());
    if let Some(token) = token_of(headers) {
        let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| ApiError(StatusCode::UNAUTHORIZED, "unknown token".into()))?;
        probe.metadata_mut().insert("authorization", value);
    }
    let caller = web.state.config.tokens.user(&probe)?;
    let mut request = Request::new(message);
    *request.metadata_mut() = probe.metadata().clone();
    request.extensions_mut().insert(caller.clone());
    Ok((caller, request))
}

/// Who is calling (the `Farm` service's scope).
fn caller(web: &Web, headers: &HeaderMap) -> ApiResult<Caller> {
    as_grpc(web, headers, ()).map(|(c, _)| c)
}

// ------------------------------------------------------------- session --

async fn session(AxumState(web): AxumState<Web>, headers: HeaderMap) -> Json<Value> {
    let required = !web.state.config.tokens.disabled();
    let caller = caller(&web, &headers).ok();
    Json(json!({ "auth_required": required, "signed_in": caller.is_some(), "admin": caller.is_some_and(|c| c.admin) }))
}

#[derive(Deserialize)]
struct SignIn {
    token: String,
}

/// Checks a token and hands it back as the cookie the page then sends.
async fn sign_in(AxumState(web): AxumState<Web>, Json(body): Json<SignIn>) -> ApiResult<Response> {
    let mut headers = HeaderMap::new();
    let value = HeaderValue::try_from(format!("Bearer {}", body.token)).map_err(|_| ApiError(StatusCode::UNAUTHORIZED, "unknown token".into()))?;
    headers.insert(header::AUTHORIZATION, value);
    let who = caller(&web, &headers)?;
    let secure = if web.tls { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000{secure}", body.token);
    let cookie = HeaderValue::try_from(cookie).map_err(|_| bad_request("a token is printable ASCII"))?;
    Ok(([(header::SET_COOKIE, cookie)], Json(json!({ "signed_in": true, "admin": who.admin }))).into_response())
}

async fn sign_out() -> Response {
    ([(header::SET_COOKIE, format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"))], Json(json!({ "signed_in": false }))).into_response()
}

// ---------------------------------------------------------------- farm --

/// Workers with their pace, the queue, jobs done in the last hour and the
/// last day's failures by cause.
async fn farm(AxumState(web): AxumState<Web>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let (_, request) = as_grpc(&web, &headers, pb::ListWorkersRequest::default())?;
    let workers = web.farm.list_workers(request).await?.into_inner().workers;
    let (summary, counts) = web.state.state.read(|db| Ok::<_, rusqlite::Error>((db.farm_summary()?, db.counts()?))).await?.map_err(db_err)?;
    let pace: HashMap<String, f64> = summary.iterations_per_second.into_iter().collect();
    let workers: Vec<Value> = workers
        .iter()
        .map(|w| {
            json!({
                "id": w.worker_id, "name": w.name, "device": w.device, "device_name": w.device_name,
                "memory_bytes": w.memory_bytes, "last_seen_unix": w.last_seen_unix, "current_job": w.current_job,
                "iterations_per_second": pace.get(&w.worker_id).copied().filter(|_| !w.current_job.is_empty()),
                "strikes": w.strikes, "quarantined": w.quarantined, "quarantine_reason": w.quarantine_reason,
                "state": pb::WorkerState::try_from(w.state).unwrap_or_default().as_str_name().to_lowercase(),
                "draining": w.draining, "registered_unix": w.registered_unix,
            })
        })
        .collect();
    let counts: serde_json::Map<String, Value> = counts.into_iter().map(|(name, n)| (name.to_string(), json!(n))).collect();
    let failures: Vec<Value> = summary.failures_last_day.into_iter().map(|(cause, n)| json!({ "cause": cause, "count": n })).collect();
    Ok(Json(json!({
        "now_unix": crate::db::now(), "workers": workers, "jobs": counts,
        "done_last_hour": summary.done_last_hour, "failures_last_day": failures,
    })))
}

/// An operator's action on a worker: drain, resume or forget (the `Farm`
/// service checks the admin token).
async fn act_on_worker(
    AxumState(web): AxumState<Web>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Json(_): Json<Value>,
) -> ApiResult<Json<Value>> {
    let (_, request) = as_grpc(&web, &headers, pb::WorkerRef { worker_id: id })?;
    let w = match action.as_str() {
        "drain" => web.farm.drain_worker(request).await?,
        "resume" => web.farm.resume_worker(request).await?,
        "forget" => web.farm.forget_worker(request).await?,
        _ => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no action {action:?} on workers: drain, resume or forget"),
            ))
        }
    }
    .into_inner();
    let state = pb::WorkerState::try_from(w.state)
        .unwrap_or_default()
        .as_str_name()
        .to_lowercase();
    Ok(Json(
        json!({ "id": w.worker_id, "state": state, "draining": w.draining }),
    ))
}

// --------------------------------------------------------- collections --

fn counts_json(c: &Option<pb::JobCounts>) -> Value {
    let c = c.clone().unwrap_or_default();
    json!({ "queued": c.queued, "running": c.running, "succeeded": c.succeeded, "failed": c.failed, "cancelled": c.cancelled })
}

fn collection_json(c: &pb::Collection) -> Value {
    json!({
        "id": c.collection_id, "name": c.name, "priority": c.priority, "contents": c.contents, "styles": c.styles,
        "variants": c.variants, "created_unix": c.created_unix, "counts": counts_json(&c.counts),
    })
}

fn state_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Queued => "queued",
        pb::JobState::Running => "running",
        pb::JobState::Succeeded => "succeeded",
        pb::JobState::Failed => "failed",
        pb::JobState::Cancelled => "cancelled",
        pb::JobState::Unspecified => "unknown",
    }
}

/// A job as the page shows it; a change from the event stream has the same
/// shape without the place and names.
fn job_json(j: &pb::Job) -> Value {
    let p = j.progress.clone().unwrap_or_default();
    json!({
        "id": j.job_id, "row": j.content_index, "style": j.style_index, "variant": j.variant_index,
        "content_name": j.content_name, "style_name": j.style_name, "state": state_name(j.state),
        "attempts": j.attempts, "worker": j.worker, "error": j.error, "started_from": j.started_from,
        "failures": j.failures, "requeues": j.requeues, "done": !j.output_key.is_empty(),
        "iteration": p.iteration, "iterations": p.iterations, "eta_seconds": p.eta_seconds,
        "losses": { "content": p.content, "style": p.style, "tv": p.tv, "total": p.total },
    })
}

#[derive(Deserialize)]
struct PageQuery {
    #[serde(default)]
    page_token: String,
    #[serde(default)]
    page_size: u32,
}

async fn list_collections(AxumState(web): AxumState<Web>, headers: HeaderMap, Query(q): Query<PageQuery>) -> ApiResult<Json<Value>> {
    let (_, request) = as_grpc(&web, &headers, pb::ListCollectionsRequest { page_size: q.page_size, page_token: q.page_token })?;
    let page = web.farm.list_collections(request).await?.into_inner();
    let collections: Vec<Value> = page.collections.iter().map(collection_json).collect();
    Ok(Json(json!({ "collections": collections, "next_page_token": page.next_page_token })))
}

/// A collection the caller may see, without its jobs; NOT_FOUND otherwise.
async fn header_of(web: &Web, caller: &Caller, id: &str) -> ApiResult<pb::Collection> {
    let owned = id.to_string();
    let read = web.state.state.read(move |db| {
        let Some((owner, mut c)) = db.collection_header(&owned)? else { return Ok(None) };
        c.counts = Some(db.job_counts(&owned)?);
        Ok::<_, rusqlite::Error>(Some((owner, c)))
    });
    Ok(caller.visible(read.await?.map_err(db_err)?, || format!("no collection {id}"))?)
}

/// The collection's header: its shape, counts and columns (style ×
/// variant, with each variant's parameters).
async fn collection(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let who = caller(&web, &headers)?;
    let c = header_of(&web, &who, &id).await?;
    let owned = id.clone();
    let columns = web.state.state.read(move |db| db.grid_columns(&owned)).await?.map_err(db_err)?;
    let columns: Vec<Value> = columns
        .into_iter()
        .map(|(style, variant, name, params)| {
            let params: Value = serde_json::from_str(&params).unwrap_or(Value::Null);
            json!({ "style": style, "variant": variant, "style_name": name, "params": params })
        })
        .collect();
    let mut body = collection_json(&c);
    body["columns"] = json!(columns);
    Ok(Json(body))
}

#[derive(Deserialize)]
struct GridQuery {
    #[serde(default)]
    from_row: u32,
    #[serde(default)]
    rows: Option<u32>,
}

/// One screen of the grid: the jobs of rows `from_row..from_row + rows`.
async fn grid(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(id): Path<String>, Query(q): Query<GridQuery>) -> ApiResult<Json<Value>> {
    let who = caller(&web, &headers)?;
    let rows = q.rows.unwrap_or(50);
    if rows == 0 || rows > MAX_GRID_ROWS {
        return Err(bad_request(format!("rows must be 1..={MAX_GRID_ROWS}, not {rows}")));
    }
    web.farm.check_visible(&who, &id).await?;
    let (owned, from) = (id.clone(), q.from_row);
    let jobs = web.state.state.read(move |db| db.grid_rows(&owned, from, rows)).await?.map_err(db_err)?;
    let jobs: Vec<Value> = jobs.iter().map(job_json).collect();
    Ok(Json(json!({ "from_row": q.from_row, "rows": rows, "jobs": jobs })))
}

/// Server-sent events: `hello` on every connection (with a one-second
/// reconnect delay; the page re-reads what it shows on each hello after
/// the first, so nothing that changed while it was away is missed),
/// `changes` (the jobs that changed, at most ten batches a second),
/// `resync` (changes were lost: read again), a comment every 15 s to keep
/// the connection open; until the client goes or the coordinator stops.
/// Counts against the watcher limits like a `Watch`.
async fn events(
    AxumState(web): AxumState<Web>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let who = caller(&web, &headers)?;
    web.farm.check_visible(&who, &id).await?;
    // Who the limit counts against: the user, or (no tokens) the address,
    // as for Watch.
    let client = if who.owner.is_empty() { peer.ip().to_string() } else { who.owner.clone() };
    let permit = web.state.watchers.admit(&client)?;
    let subscription = web.state.hubs.subscribe(&id);
    let stopping = web.stopping.clone();
    let stream = futures_stream(subscription.batches, stopping, permit);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

/// The event stream of one browser, fed by a task that follows the
/// collection's merger: each batch becomes one event, sent when the
/// connection takes it. A browser that falls behind by more than the
/// merger keeps is told to resynchronise; nothing else is buffered for it.
fn futures_stream(
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
                        let jobs: Vec<Value> = changes.iter().map(|e| job_json(&e.job)).collect();
                        json!({ "jobs": jobs }).to_string()
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

async fn cancel_collection(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(id): Path<String>, Json(_): Json<Value>) -> ApiResult<Json<Value>> {
    let (_, request) = as_grpc(&web, &headers, pb::CollectionRef { collection_id: id })?;
    let mut c = web.farm.cancel(request).await?.into_inner();
    c.jobs.clear();
    Ok(Json(collection_json(&c)))
}

/// Every failed job of the collection back in the queue.
async fn retry_failed(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(id): Path<String>, Json(_): Json<Value>) -> ApiResult<Json<Value>> {
    let (_, request) = as_grpc(&web, &headers, pb::CollectionRef { collection_id: id })?;
    let mut c = web.farm.retry_failed(request).await?.into_inner();
    c.jobs.clear();
    Ok(Json(collection_json(&c)))
}

/// The whole collection as a zip: every finished image (named
/// `content_style_vN.png`) and the contact sheet when the collection has at
/// most [`crate::limits::MAX_SHEET_CELLS`] cells. Built on the blocking
/// threads in a temporary file, not in memory, then streamed; a client
/// builds at most two at once.
async fn zip(AxumState(web): AxumState<Web>, ConnectInfo(Peer(peer)): ConnectInfo<Peer>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Response> {
    let (who, request) = as_grpc(&web, &headers, pb::CollectionRef { collection_id: id.clone() })?;
    let c = web.farm.get_collection(request).await?.into_inner();
    let client = if who.owner.is_empty() { peer.ip().to_string() } else { who.owner.clone() };
    let place = web.state.zips.admit(&client)?;
    let owned = id.clone();
    let params = web.state.state.read(move |db| db.grid_columns(&owned)).await?.map_err(db_err)?;
    let params = variant_params(params);
    let (store, dir, runtime, name) = (web.state.store.clone(), web.state.config.data_dir.clone(), tokio::runtime::Handle::current(), zip_name(&c));
    let built = web
        .state
        .work
        .run(move || {
            let _place = place;
            build_zip(&c, &params, &store, &dir, &runtime)
        })
        .await?;
    let mut file = built.map_err(|(what, e)| {
        tracing::error!("zip of {id}: {what}: {e}");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("the zip could not be built ({what}); see the coordinator's log"))
    })?;
    std::io::Seek::rewind(&mut file).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("the zip could not be read back: {e}")))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file)));
    let disposition = format!("attachment; filename=\"{name}.zip\"");
    Ok(([(header::CONTENT_TYPE, "application/zip".to_string()), (header::CONTENT_DISPOSITION, disposition)], body).into_response())
}

/// A collection's zip's file name: its name made safe, or its id.
fn zip_name(c: &pb::Collection) -> String {
    Some(stylefarm_shared::sheet::safe_name(&c.name)).filter(|n| !n.is_empty()).unwrap_or_else(|| c.collection_id.clone())
}

/// Each variant's parameters, from the grid's columns (the first style's).
fn variant_params(columns: Vec<(u32, u32, String, String)>) -> Vec<Value> {
    columns.into_iter().filter(|(style, ..)| *style == 0).map(|(_, _, _, params)| serde_json::from_str(&params).unwrap_or(Value::Null)).collect()
}

/// [`zip`]'s work, on a blocking thread (storage is read through the
/// runtime's handle): what failed and why, or the finished file. Entries
/// are dated now (a zip's default is 1980).
fn build_zip(
    c: &pb::Collection,
    params: &[Value],
    store: &stylefarm_shared::storage::Store,
    dir: &std::path::Path,
    runtime: &tokio::runtime::Handle,
) -> Result<std::fs::File, (&'static str, String)> {
    use stylefarm_shared::sheet::{self, Cell};
    let failed = |what: &'static str| move |e: &dyn std::fmt::Display| (what, e.to_string());
    let file = tempfile::tempfile_in(dir).map_err(|e| failed("a temporary file")(&e))?;
    let mut zip = zip::ZipWriter::new(file);
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).last_modified_time(zip_time(crate::db::now()));
    let cells = c.contents as u64 * c.styles as u64 * c.variants.max(1) as u64;
    let mut sheet = (cells <= crate::limits::MAX_SHEET_CELLS).then(|| sheet::collection::sheet(c, params));
    for j in c.jobs.iter().filter(|j| j.state == pb::JobState::Succeeded as i32) {
        let (row, col) = (j.content_index as usize, sheet::collection::column_of(c, j));
        let bytes = match runtime.block_on(store.get(&j.output_key)) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("zip of {}: {} not read: {e}", c.collection_id, j.output_key);
                if let Some(sheet) = sheet.as_mut() {
                    sheet.set(row, col, Cell::Missing("not in storage".into()));
                }
                continue;
            }
        };
        if let Some(sheet) = sheet.as_mut() {
            let cell = match image::load_from_memory(&bytes) {
                Ok(img) => Cell::Image(img.to_rgb8()),
                Err(e) => Cell::Missing(format!("not an image: {e}")),
            };
            sheet.set(row, col, cell);
        }
        let name = sheet::output_name(&j.content_name, &j.style_name, j.variant_index);
        zip.start_file(name, stored).map_err(|e| failed("writing it")(&e))?;
        std::io::Write::write_all(&mut zip, &bytes).map_err(|e| failed("writing it")(&e))?;
    }
    if let Some(sheet) = sheet {
        let mut png = std::io::Cursor::new(Vec::new());
        sheet.to_image().write_to(&mut png, image::ImageFormat::Png).map_err(|e| failed("the contact sheet")(&e))?;
        zip.start_file("contact_sheet.png", stored).map_err(|e| failed("writing it")(&e))?;
        std::io::Write::write_all(&mut zip, png.get_ref()).map_err(|e| failed("writing it")(&e))?;
        let pdf = sheet.to_pdf();
        zip.start_file("contact_sheet.pdf", stored).map_err(|e| failed("writing it")(&e))?;
        std::io::Write::write_all(&mut zip, &pdf).map_err(|e| failed("writing it")(&e))?;
    }
    zip.finish().map_err(|e| failed("finishing it")(&e))
}

/// `unix` as a zip entry's time (UTC; zip keeps no zone).
fn zip_time(unix: f64) -> zip::DateTime {
    use chrono::{Datelike, Timelike};
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .and_then(|t| zip::DateTime::from_date_and_time(t.year() as u16, t.month() as u8, t.day() as u8, t.hour() as u8, t.minute() as u8, t.second() as u8).ok())
        .unwrap_or_default()
}


// --------------------------------------------------------------- submit --

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Upload {
    #[serde(default)]
    name: String,
    /// The file's bytes, base64.
    data: String,
}

/// `SubmitRequest` as JSON, images base64 and variants as objects.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    #[serde(default)]
    name: String,
    contents: Vec<Upload>,
    styles: Vec<Upload>,
    /// Kept as the client's text: never built into a tree, so a huge
    /// nested value costs its bytes and no more.
    #[serde(default)]
    variants: Vec<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    width: u32,
    #[serde(default)]
    height: u32,
    #[serde(default)]
    max_side: u32,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    checkpoint_every: u32,
    #[serde(default)]
    snapshot_every: u32,
    #[serde(default)]
    blend_styles: bool,
    #[serde(default)]
    notify_url: String,
    #[serde(default)]
    idempotency_key: String,
}

fn decode_uploads(uploads: Vec<Upload>, role: &str) -> ApiResult<Vec<pb::InputImage>> {
    uploads
        .into_iter()
        .enumerate()
        .map(|(i, u)| {
            let data = base64::engine::general_purpose::STANDARD
                .decode(u.data.as_bytes())
                .map_err(|e| bad_request(format!("{role} {} ({}): its data is not base64: {e}", i + 1, u.name)))?;
            Ok(pb::InputImage { name: u.name, source: Some(pb::input_image::Source::Data(data)) })
        })
        .collect()
}

/// Submits through the `Farm` service's own handler. The body (up to the
/// submit limit, read only once [`guard`] has checked the token) is parsed
/// on the blocking threads, within the caller's place among the submits
/// being read, which the handler then keeps.
async fn submit(AxumState(web): AxumState<Web>, ConnectInfo(Peer(peer)): ConnectInfo<Peer>, headers: HeaderMap, body: axum::body::Bytes) -> ApiResult<Json<Value>> {
    let json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError(StatusCode::UNSUPPORTED_MEDIA_TYPE, "a submit is a JSON body (Content-Type: application/json)".into()));
    }
    let who = caller(&web, &headers)?;
    let client = if who.owner.is_empty() { peer.ip().to_string() } else { who.owner.clone() };
    let place = Arc::new(web.state.submits.admit(&client)?);
    let parsed = web.state.work.run(move || serde_json::from_slice::<SubmitBody>(&body)).await?;
    // A body that is not the request's shape is bad input (400) like any other.
    let b = parsed.map_err(|e| bad_request(format!("the submit's JSON: {e}")))?;
    let variants = b
        .variants
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let text = v.get().trim();
            if text.starts_with('{') { Ok(text.to_string()) } else { Err(bad_request(format!("variant {i}: must be a JSON object of parameters"))) }
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let message = pb::SubmitRequest {
        name: b.name,
        contents: decode_uploads(b.contents, "content")?,
        styles: decode_uploads(b.styles, "style")?,
        variants_json: variants,
        width: b.width,
        height: b.height,
        max_side: b.max_side,
        priority: b.priority,
        checkpoint_every: b.checkpoint_every,
        snapshot_every: b.snapshot_every,
        blend_styles: b.blend_styles,
        idempotency_key: b.idempotency_key,
        notify_url: b.notify_url,
    };
    let (_, mut request) = as_grpc(&web, &headers, message)?;
    request.extensions_mut().insert(place);
    let r = web.farm.submit(request).await?.into_inner();
    Ok(Json(json!({ "collection_id": r.collection_id, "jobs": r.jobs })))
}

// ----------------------------------------------------------------- jobs --

/// The one collection or job the caller may see whose id starts with
/// `prefix` (at least 4 characters, as git asks): `{"kind", "id"}`; 404
/// when none does, 400 naming how many when several do.
async fn resolve_id(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(prefix): Path<String>) -> ApiResult<Json<Value>> {
    let who = caller(&web, &headers)?;
    let prefix = prefix.to_ascii_lowercase();
    if !(4..=36).contains(&prefix.len()) || !prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(bad_request(format!("{prefix:?} is not an id or the start of one: 4 to 36 of 0-9 a-f and -")));
    }
    let owned = prefix.clone();
    let found = web.state.state.read(move |db| db.ids_starting(&owned, 20)).await?.map_err(db_err)?;
    let mut seen: Vec<_> = found.into_iter().filter(|(_, _, owner)| who.may_see(owner)).collect();
    match seen.len() {
        0 => Err(ApiError(StatusCode::NOT_FOUND, format!("no collection or job you can see has an id starting with {prefix}"))),
        1 => {
            let (kind, id, _) = seen.remove(0);
            Ok(Json(json!({ "kind": kind.as_str(), "id": id })))
        }
        n => Err(bad_request(format!("{prefix} starts {n} ids{}; give more of it", if n >= 20 { " or more" } else { "" }))),
    }
}

/// A job, its attempts and the files of its latest attempt.
async fn job(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id_for_params = id.clone();
    let (_, request) = as_grpc(&web, &headers, pb::JobRef { job_id: id.clone() })?;
    let detail = web.farm.get_job(request).await?.into_inner();
    let (_, request) = as_grpc(&web, &headers, pb::JobRef { job_id: id })?;
    let files = web.farm.list_job_files(request).await?.into_inner();
    let job = detail.job.as_ref().map(job_json).unwrap_or(Value::Null);
    let attempts: Vec<Value> = detail
        .attempts
        .iter()
        .map(|a| json!({ "attempt": a.attempt, "worker": a.worker, "started_unix": a.started_unix, "ended_unix": a.ended_unix, "outcome": a.outcome, "resumed_from": a.resumed_from }))
        .collect();
    let files: Vec<Value> = files.files.iter().map(|f| json!({ "name": f.name, "size_bytes": f.size_bytes })).collect();
    let collection = detail.job.map(|j| j.collection_id).unwrap_or_default();
    // Visible (GetJob said so): the parameters it runs with, every key.
    let owned = id_for_params.clone();
    let params = web.state.state.read(move |db| db.job_params(&owned)).await?.map_err(db_err)?;
    let params: Value = params.and_then(|p| serde_json::from_str(&p).ok()).unwrap_or(Value::Null);
    Ok(Json(json!({ "job": job, "collection_id": collection, "attempts": attempts, "files": files, "params": params })))
}

async fn cancel_job(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(id): Path<String>, Json(_): Json<Value>) -> ApiResult<Json<Value>> {
    let (_, request) = as_grpc(&web, &headers, pb::JobRef { job_id: id })?;
    Ok(Json(job_json(&web.farm.cancel_job(request).await?.into_inner())))
}

/// A retry's body: `{}`, or `{"changes": {KEY: VALUE, …}}` (Retry with
/// changes; the keys are a variant's).
async fn retry_job(
    AxumState(web): AxumState<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    let changes_json = match body.get("changes") {
        None | Some(Value::Null) => String::new(),
        Some(c @ Value::Object(_)) => c.to_string(),
        Some(_) => {
            return Err(bad_request(
                "changes: a JSON object of parameters, e.g. {\"beta\": 1000}",
            ))
        }
    };
    let (_, request) = as_grpc(
        &web,
        &headers,
        pb::RetryJobRequest {
            job_id: id,
            changes_json,
        },
    )?;
    Ok(Json(job_json(
        &web.farm.retry_job(request).await?.into_inner(),
    )))
}

/// A job's folders, newest attempt first, if the caller may see the job.
async fn attempt_folders(web: &Web, headers: &HeaderMap, id: &str) -> ApiResult<Vec<String>> {
    let who = caller(web, headers)?;
    let owned = id.to_string();
    let found = web.state.state.read(move |db| db.latest_attempt(&owned)).await?.map_err(db_err)?;
    let (collection, attempts) = who.visible(found.map(|(c, owner, n)| (owner, (c, n))), || format!("no job {id}"))?;
    Ok((1..=attempts.max(1)).rev().map(|n| paths::attempt(&collection, id, n)).collect())
}

/// The job's latest preview (the newest attempt that wrote one); 404 until
/// a worker has written one.
async fn preview(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Response> {
    for folder in attempt_folders(&web, &headers, &id).await? {
        let key = paths::in_attempt(&folder, stylefarm_shared::records::job_files::PREVIEW);
        if let Ok(bytes) = web.state.store.get(&key).await {
            return Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "no-store")], bytes).into_response());
        }
    }
    Err(ApiError(StatusCode::NOT_FOUND, format!("job {id} has no preview yet")))
}

#[derive(Deserialize)]
struct FileQuery {
    #[serde(default)]
    download: bool,
}

/// A file of the job's latest attempt, by the name `GET /api/jobs/{id}`
/// lists (`tb/…` for the TensorBoard events).
async fn job_file(AxumState(web): AxumState<Web>, headers: HeaderMap, Path((id, name)): Path<(String, String)>, Query(q): Query<FileQuery>) -> ApiResult<Response> {
    let parts: Vec<&str> = name.split('/').collect();
    let valid = match parts.as_slice() {
        [file] => paths::file_name(file),
        [dir, file] => *dir == stylefarm_shared::records::job_files::TENSORBOARD && paths::file_name(file),
        _ => false,
    };
    if !valid {
        return Err(bad_request(format!("`{name}` is not the name of a job's file")));
    }
    let folder = attempt_folders(&web, &headers, &id).await?.into_iter().next().unwrap_or_default();
    let key = paths::in_attempt(&folder, &name);
    let unavailable = |e: stylefarm_shared::storage::StorageError| {
        tracing::error!("storage: read {key}: {e}");
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "the farm's storage could not read the file; try again later".into())
    };
    match web.state.store.size(&key).await.map_err(unavailable)? {
        Some(_) => {}
        None => return Err(ApiError(StatusCode::NOT_FOUND, format!("job {id} has no file {name}"))),
    }
    // Streamed as storage hands it over: a checkpoint of gigabytes is
    // never held whole, and a slow reader only slows its own download.
    let (size, pieces) = web.state.store.get_stream(&key).await.map_err(unavailable)?;
    let body = Body::from_stream(pieces);
    let kind = match name.rsplit('.').next() {
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("jsonl") | Some("dot") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    let base = name.rsplit('/').next().unwrap_or("file");
    let disposition = if q.download || kind == "image/svg+xml" || kind == "application/octet-stream" {
        format!("attachment; filename=\"{base}\"")
    } else {
        format!("inline; filename=\"{base}\"")
    };
    let headers = [
        (header::CONTENT_TYPE, kind.to_string()),
        (header::CONTENT_DISPOSITION, disposition),
        (header::CACHE_CONTROL, "no-store".to_string()),
        (header::CONTENT_LENGTH, size.to_string()),
    ];
    Ok((headers, body).into_response())
}

// -------------------------------------------------------------- serving --

/// Serves the dashboard on `listener` (over TLS when `tls` is given) until
/// `stopping` is cancelled. Connections pass the coordinator's gate
/// ([`crate::conn`]); each is served by hyper with a deadline for its
/// request headers, and closed gracefully when the coordinator stops.
pub(crate) async fn serve(
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    gate: Arc<crate::conn::Gate>,
    stopping: CancellationToken,
) -> std::io::Result<()> {
    let app = router(state, tls.is_some(), stopping.clone());
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "dashboard started");
    let mut ready = crate::conn::accept(listener, gate);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let connection = tokio::select! {
            _ = stopping.cancelled() => return Ok(()),
            c = ready.recv() => match c { Some(c) => c, None => return Ok(()) },
        };
        let peer = connection.peer();
        let service = app.clone().layer(axum::Extension(ConnectInfo(Peer(peer))));
        let (acceptor, stopping) = (acceptor.clone(), stopping.clone());
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(connection, service, stopping).await,
                Some(acceptor) => match tokio::time::timeout(crate::conn::FIRST_BYTES, acceptor.accept(connection)).await {
                    Ok(Ok(tls)) => serve_connection(tls, service, stopping).await,
                    Ok(Err(e)) => tracing::debug!(%peer, "dashboard TLS handshake: {e}"),
                    Err(_) => tracing::debug!(%peer, "dashboard TLS handshake timed out"),
                },
            }
        });
    }
}

/// One connection, HTTP/1.1 (or HTTP/2 if the client speaks it), until it
/// closes or the coordinator stops.
async fn serve_connection<I>(io: I, service: Router, stopping: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(crate::conn::HEADER_READ);
    let service = hyper_util::service::TowerToHyperService::new(service);
    let connection = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stopping.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
        }
    }
}

/// A connection's remote address, plain or over TLS.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(SocketAddr);

/// The dashboard's TLS configuration from the coordinator's certificate
/// and key (PEM).
pub(crate) fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>().map_err(|e| format!("the certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("the private key: {e}"))?;
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn without_tokens_only_local_names_and_always_only_the_pages_own_origin() {
        // (tokens configured, method, host, origin, allowed)
        let cases = [
            (false, Method::GET, "127.0.0.1:8080", None, true),
            (false, Method::GET, "localhost:8080", None, true),
            (false, Method::GET, "farm.localhost", None, true),
            (false, Method::GET, "[::1]:8080", None, true),
            (false, Method::GET, "10.1.2.3:8080", None, true),
            (false, Method::GET, "rebind.attacker.example:8080", None, false),
            (false, Method::GET, "localhost.attacker.example", None, false),
            (true, Method::GET, "farm.example.com", None, true),
            (true, Method::POST, "farm.example.com", Some("https://farm.example.com"), true),
            (true, Method::POST, "farm.example.com", Some("https://evil.example"), false),
            (true, Method::POST, "farm.example.com", Some("null"), false),
            (true, Method::POST, "farm.example.com", None, true),
            (false, Method::POST, "127.0.0.1:8080", Some("http://127.0.0.1:8080"), true),
            (false, Method::POST, "127.0.0.1:8080", Some("http://127.0.0.1:9999"), false),
            (true, Method::GET, "farm.example.com", Some("https://evil.example"), true),
        ];
        for (tokens, method, host, origin, allowed) in cases {
            let mut pairs = vec![(header::HOST, host)];
            if let Some(o) = origin {
                pairs.push((header::ORIGIN, o));
            }
            let got = check_origin(tokens, &method, &headers(&pairs));
            assert_eq!(got.is_ok(), allowed, "tokens {tokens}, {method} Host {host} Origin {origin:?}: {got:?}");
            if let Err(ApiError(status, _)) = got {
                assert_eq!(status, StatusCode::FORBIDDEN);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_zip_carries_every_image_and_a_contact_sheet_only_while_it_is_small() {
        let dir = tempfile::tempdir().unwrap();
        let store = stylefarm_shared::storage::Store::open(&dir.path().join("storage").to_string_lossy()).unwrap();
        let mut png = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(4, 3, image::Rgb([200, 10, 10])).write_to(&mut png, image::ImageFormat::Png).unwrap();
        store.put("out.png", png.into_inner()).await.unwrap();
        for (variants, sheet) in [(2u32, true), (crate::limits::MAX_SHEET_CELLS as u32 + 1, false)] {
            let jobs = (0..variants)
                .map(|v| pb::Job {
                    content_name: "c".into(),
                    style_name: "s".into(),
                    variant_index: v,
                    state: pb::JobState::Succeeded as i32,
                    output_key: "out.png".into(),
                    ..Default::default()
                })
                .collect();
            let c = pb::Collection { contents: 1, styles: 1, variants, jobs, created_unix: crate::db::now(), ..Default::default() };
            let (store, path, runtime) = (store.clone(), dir.path().to_path_buf(), tokio::runtime::Handle::current());
            let file = tokio::task::spawn_blocking(move || build_zip(&c, &[], &store, &path, &runtime)).await.unwrap().unwrap();
            let mut zip = zip::ZipArchive::new(file).unwrap();
            let names: Vec<String> = zip.file_names().map(String::from).collect();
            assert_eq!(names.iter().filter(|n| n.contains("_v")).count(), variants as usize);
            assert_eq!(names.contains(&"contact_sheet.png".to_string()), sheet, "{variants} cells");
            assert_eq!(names.contains(&"contact_sheet.pdf".to_string()), sheet, "{variants} cells");
            // Dated today, not 1980.
            let year = zip.by_index(0).unwrap().last_modified().map(|t| t.year()).unwrap_or(0);
            assert!(year >= 2026, "entries dated {year}");
        }
    }
}
