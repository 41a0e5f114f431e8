//! The dashboard: a web page served by the coordinator on its own HTTP port
//! (`--http-listen`), from the same process and the same state as the gRPC
//! API. Its assets (`web/`) are compiled into the binary; its JSON API
//! ([`api`]) speaks farm.proto's messages as canonical JSON and calls the
//! same handler a gRPC client reaches, so a submit from the browser gets
//! the same validation and the same messages as `farmctl submit`; files,
//! previews and zips are [`files`]. This module routes, authenticates and
//! serves. Live updates are server-sent events fed
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

mod api;
mod files;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State as AxumState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

use crate::auth::Caller;
use crate::limits::MAX_SMALL_BODY_BYTES;
use crate::context::State;
use crate::service::FarmService;

/// The cookie that keeps a browser's token.
const COOKIE: &str = "stylefarm_token";

use crate::limits::MAX_GRID_ROWS;

/// The page and its assets, compiled in.
const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const STYLE_CSS: &str = include_str!("../../web/style.css");
const FAVICON_SVG: &str = include_str!("../../web/favicon.svg");

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
        .route("/api/session", get(api::session).post(api::sign_in).delete(api::sign_out))
        .route("/api/farm", get(api::farm))
        .route("/api/workers/{id}/{action}", post(api::act_on_worker))
        .route("/api/collections", get(api::list_collections).post(api::submit).layer(DefaultBodyLimit::max(submit_limit)))
        .route("/api/collections/{id}", get(api::collection).patch(api::update_collection).delete(api::delete_collection))
        .route("/api/collections/{id}/grid", get(api::grid))
        .route("/api/collections/{id}/events", get(api::events))
        .route("/api/collections/{id}/cancel", post(api::cancel_collection))
        .route("/api/collections/{id}/retry-failed", post(api::retry_failed))
        .route("/api/collections/{id}/zip", get(files::zip))
        .route("/api/ids/{prefix}", get(api::resolve_id))
        .route("/api/jobs/{id}", get(api::job))
        .route("/api/jobs/{id}/files", get(api::job_files))
        .route("/api/jobs/{id}/cancel", post(api::cancel_job))
        .route("/api/jobs/{id}/retry", post(api::retry_job))
        .route("/api/jobs/{id}/preview", get(files::preview))
        .route("/api/jobs/{id}/files/{*name}", get(files::job_file))
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

    /// The page reads only what the contract defines: every snake_case
    /// field it reads (`.created_unix`, `.job_id`; the browser's own names
    /// are camelCase) is a field of a message in farm.proto. (The browser
    /// tests check the rest at run time: in strict mode every read of a
    /// field a message lacks is recorded, and they assert none was.)
    #[test]
    fn the_page_reads_only_fields_the_contract_defines() {
        let proto = include_str!("../../../proto/proto/farm.proto");
        let fields: std::collections::BTreeSet<&str> = proto
            .lines()
            .filter_map(|l| {
                let l = l.split("//").next()?.trim().trim_start_matches("repeated ").trim_start_matches("optional ");
                let mut words = l.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some(_), Some(name), Some("=")) => Some(name),
                    _ => None,
                }
            })
            .collect();
        assert!(fields.contains("created_unix") && fields.contains("params_json"), "the proto's fields were read");
        let reads = |js: &str| -> std::collections::BTreeSet<String> {
            let bytes = js.as_bytes();
            let mut found = std::collections::BTreeSet::new();
            for (i, _) in js.match_indices('.') {
                let name: String = js[i + 1..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let word_before = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || matches!(bytes[i - 1], b')' | b']' | b'_'));
                if word_before && name.contains('_') && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                    found.insert(name);
                }
            }
            found
        };
        let unknown: Vec<String> = reads(APP_JS).into_iter().filter(|n| !fields.contains(n.as_str())).collect();
        assert!(unknown.is_empty(), "app.js reads fields farm.proto does not define: {unknown:?}");
        // The check can fail: the drifted names of old are caught.
        let drifted = reads("c.total_loss + j.iters + w.iterations_per_hour + a.started_unix");
        assert_eq!(drifted.into_iter().filter(|n| !fields.contains(n.as_str())).collect::<Vec<_>>(), ["iterations_per_hour", "total_loss"]);
    }
}
