//! How a client reaches the coordinator: the endpoint (TLS, optionally
//! mutual), a bearer token in the `authorization` header, the clap flags
//! for both, defined once for `farmctl` and `farm-worker`, and failover
//! across several coordinators of one farm: [`Rotation`], the one rule of
//! which coordinator calls go to (the worker's [`Failover`] channel and
//! farmctl's retrying calls both follow it). The server's side of the same
//! rules lives in the coordinator.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

/// How long a client waits for a connection to the coordinator.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long one call may wait for its answer to begin (a stream's messages
/// may then take as long as they take): a coordinator that went silent is
/// noticed instead of waited on forever. Long enough for a submit of
/// `--max-request-mb` over a slow link.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// HTTP/2 pings (and TCP keep-alive) this often on every connection, even
/// idle …
pub const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);
/// … and a connection whose ping is not answered within this is dropped,
/// so the next call reconnects instead of writing into a dead socket.
pub const KEEP_ALIVE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// The largest message a worker decodes (tonic's default, said here so
/// the coordinator can promise it): every Lease reply the coordinator
/// could send fits, which it checks when a collection is submitted.
pub const MAX_WORKER_MESSAGE_BYTES: usize = 4 << 20;

/// The TLS flags of every client, flattened into `farmctl`'s and
/// `farm-worker`'s command lines. (The token flag stays with each binary:
/// a user token and a worker token are different secrets with different
/// environment variables.)
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsFlags {
    /// CA certificate of the coordinator (use an https:// URL).
    #[arg(long, global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate for mutual TLS …
    #[arg(long, global = true, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// … and its key.
    #[arg(long, global = true, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TlsFlags {
    /// These flags with `token`, as what a client needs to connect.
    pub fn with_token(&self, token: Option<String>) -> ClientSecurity {
        ClientSecurity { token, tls_ca: self.tls_ca.clone(), tls_cert: self.tls_cert.clone(), tls_key: self.tls_key.clone() }
    }
}

/// What a client needs to connect.
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    /// Bearer token sent with every call.
    pub token: Option<String>,
    /// CA that signed the coordinator's certificate (enables TLS; use an
    /// `https://` URL).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key, for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// Why a client could not be set up or could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{url}` is not a coordinator URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Tls(String),
    #[error("cannot reach the coordinator at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the token has characters a header cannot carry")]
    BadToken,
}

fn read(path: &PathBuf, what: &'static str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read { what, path: path.clone(), source })
}

impl ClientSecurity {
    /// The endpoint for `url`, with TLS configured when asked for.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, ClientError> {
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| ClientError::BadUrl { url: url.to_string(), reason: e.to_string() })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_keepalive(Some(KEEP_ALIVE))
            .http2_keep_alive_interval(KEEP_ALIVE)
            .keep_alive_timeout(KEEP_ALIVE_PATIENCE)
            .keep_alive_while_idle(true);
        let wants_tls = url.starts_with("https://");
        match (&self.tls_ca, wants_tls) {
            (Some(ca), true) => {
                let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "CA certificate")?));
                if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
                    tls = tls.identity(Identity::from_pem(read(cert, "client certificate")?, read(key, "client key")?));
                }
                endpoint = endpoint.tls_config(tls).map_err(|e| ClientError::Tls(format!("TLS setup failed: {e}")))?;
            }
            (None, true) => return Err(ClientError::Tls(format!("{url} is https: give the CA certificate (--tls-ca)"))),
            (Some(_), false) => return Err(ClientError::Tls(format!("--tls-ca given but {url} is not https://"))),
            (None, false) => {}
        }
        Ok(endpoint)
    }

    /// Connects (once; callers retry as they see fit, e.g. with
    /// [`crate::backoff`]).
    pub async fn connect(&self, url: &str) -> Result<Channel, ClientError> {
        let endpoint = self.endpoint(url)?;
        endpoint.connect().await.map_err(|e| ClientError::Unreachable { url: url.to_string(), reason: error_chain(&e) })
    }

    /// The interceptor that adds the bearer token.
    pub fn bearer(&self) -> Result<Bearer, ClientError> {
        let value = match &self.token {
            Some(t) => Some(MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| ClientError::BadToken)?),
            None => None,
        };
        Ok(Bearer(value))
    }
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Debug, Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// The coordinators of one farm (several on one PostgreSQL database, each
/// able to answer any call), used one at a time: every call goes to the
/// current one, and a call that could not reach it makes the next one
/// current — once: other calls that failed on the same one at the same
/// time say nothing new and move nothing. Clones share which is current.
#[derive(Debug, Clone)]
pub struct Rotation {
    urls: Arc<[String]>,
    current: Arc<AtomicUsize>,
}

impl Rotation {
    /// `urls`, the first current.
    pub fn new(urls: &[String]) -> Self {
        Self { urls: urls.into(), current: Arc::new(AtomicUsize::new(0)) }
    }

    /// Which coordinator calls go to now (an index into [`Self::urls`]).
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.urls.len().max(1)
    }

    /// The URL calls go to now ("" when none was given).
    pub fn url(&self) -> &str {
        self.urls.get(self.current()).map_or("", String::as_str)
    }

    /// Every URL, in the order they are tried.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Coordinator `i` could not be reached: the next one becomes current,
    /// unless another call already moved on from `i`. Whether this call
    /// moved it (false too with a single coordinator).
    pub fn unreachable(&self, i: usize) -> bool {
        let n = self.urls.len();
        n > 1 && self.current.compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// A channel over a [`Rotation`]: every call goes to the current
/// coordinator, and a call that cannot reach it makes the next one current.
/// Cannot reach: refused, reset, garbage or an HTTP/2 protocol error (a
/// transport error, not a gRPC refusal), no answer within
/// [`FAILOVER_PATIENCE`] (a coordinator that accepts connections and says
/// nothing), or a call its caller gave up on before any answer (a
/// heartbeat's own shorter timeout). The caller sees that call fail
/// UNAVAILABLE, as with one coordinator, and its retry reaches the next;
/// so a dead or silent coordinator costs at most one patience per listed
/// coordinator. With one URL it is a plain channel.
///
/// Not tonic's `balance_list`: it keeps routing calls to an endpoint that
/// is down (hyperium/tonic#643), where a worker must move on.
#[derive(Clone)]
pub struct Failover {
    /// Each coordinator's channel, in the rotation's order (connected
    /// lazily: on first use, and again after a broken connection).
    channels: Arc<[Channel]>,
    rotation: Rotation,
    patience: std::time::Duration,
}

/// How long a call through [`Failover`] with several coordinators waits for
/// its answer to begin before the coordinator counts as unreachable: a
/// connection's timeout. The worker's calls are small (a lease, a
/// heartbeat); farmctl's long ones (a submit) do not go through it.
pub const FAILOVER_PATIENCE: std::time::Duration = CONNECT_TIMEOUT;

impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover").field("current", &self.current_url()).field("coordinators", &self.channels.len()).finish()
    }
}

impl Failover {
    /// Channels to each of `urls` (at least one); nothing connects yet.
    /// Call it inside a Tokio runtime (each channel's task starts there).
    pub fn new(security: &ClientSecurity, urls: &[String]) -> Result<Self, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::BadUrl { url: String::new(), reason: "no coordinator URL given".into() });
        }
        let endpoints = urls.iter().map(|url| security.endpoint(url)).collect::<Result<Vec<_>, ClientError>>()?;
        let channels: Vec<_> = endpoints.iter().map(Endpoint::connect_lazy).collect();
        Ok(Self { channels: channels.into(), rotation: Rotation::new(urls), patience: FAILOVER_PATIENCE })
    }

    /// The same, waiting `patience` for an answer to begin before moving on.
    pub fn with_patience(self, patience: std::time::Duration) -> Self {
        Self { patience, ..self }
    }

    /// The URL calls go to now.
    pub fn current_url(&self) -> &str {
        self.rotation.url()
    }
}

/// A call on its way to coordinator `i`: unless it is answered, dropping it
/// (the call failed, timed out, or its caller gave up) tells the rotation
/// that `i` could not be reached.
struct Unanswered {
    i: usize,
    rotation: Rotation,
    answered: bool,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if !self.answered && self.rotation.unreachable(self.i) {
            tracing::warn!(coordinator = %self.rotation.urls()[self.i], "coordinator unreachable; calls go to the next one");
        }
    }
}

impl Service<http::Request<Body>> for Failover {
    type Response = http::Response<Body>;
    /// A [`Status`] (UNAVAILABLE, naming the coordinator and the cause), so
    /// every transport failure reads as one the caller retries.
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<Self::Response, Self::Error>;

    /// Always ready: the channel is chosen, and waited for, in `call`
    /// (the current one may change in between).
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let n = self.channels.len();
        let i = self.rotation.current();
        let (url, mut channel) = (self.rotation.urls()[i].clone(), self.channels[i].clone());
        let pending = Unanswered { i, rotation: self.rotation.clone(), answered: false };
        let patience = self.patience;
        Box::pin(async move {
            // The whole guard moves into the call (not just the field set
            // below), so it drops when the call ends or is dropped.
            let mut pending = pending;
            let unreachable = |why: String| -> Self::Error { Box::new(Status::unavailable(format!("coordinator {url} unreachable: {why}"))) };
            let send = async {
                std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(request).await
            };
            let answer = if n > 1 {
                match tokio::time::timeout(patience, send).await {
                    Ok(answer) => answer,
                    Err(_) => return Err(unreachable(format!("no answer within {patience:?}"))),
                }
            } else {
                send.await
            };
            let response = answer.map_err(|e| unreachable(error_chain(&e)))?;
            pending.answered = true;
            Ok(response)
        })
    }
}

/// An error and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    /// A coordinator stand-in: gRPC health on a loopback port.
    async fn serving() -> String {
        let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let url = format!("http://{}", incoming.local_addr().unwrap());
        let (_, health) = tonic_health::server::health_reporter();
        tokio::spawn(tonic::transport::Server::builder().add_service(health).serve_with_incoming(incoming));
        url
    }

    /// A loopback URL nothing listens on.
    fn nobody() -> String {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        format!("http://127.0.0.1:{port}")
    }

    #[tokio::test]
    async fn a_call_that_cannot_reach_one_coordinator_sends_the_next_to_another() {
        let (down, up) = (nobody(), serving().await);
        let failover = Failover::new(&ClientSecurity::default(), &[down.clone(), up.clone()]).unwrap();
        let mut client = HealthClient::new(failover.clone());
        let check = || HealthCheckRequest { service: String::new() };
        assert_eq!(failover.current_url(), down);
        let refused = client.check(check()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "the caller retries UNAVAILABLE: {refused:?}");
        assert_eq!(failover.current_url(), up);
        for _ in 0..3 {
            client.check(check()).await.expect("the next calls reach the coordinator that is up");
        }
        assert_eq!(failover.current_url(), up, "a coordinator that answers keeps the calls");
        // Refusals of its own (here: an unknown service) do not move on.
        let unknown = client.check(HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        assert_eq!(failover.current_url(), up);
    }

    /// A loopback server that accepts connections and then does `what`
    /// with each: `Garbage` writes bytes that are not HTTP/2 and closes,
    /// `Silent` holds it open and never answers.
    async fn misbehaving(what: Misbehaviour) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                match what {
                    Misbehaviour::Garbage => {
                        let _ = tokio::io::AsyncWriteExt::write_all(&mut socket, b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\ngarbage").await;
                    }
                    Misbehaviour::Silent => held.push(socket),
                }
            }
        });
        url
    }

    #[derive(Clone, Copy)]
    enum Misbehaviour {
        Garbage,
        Silent,
    }

    /// Garbage, a coordinator that never answers, and a call its caller
    /// gave up on each move the calls on (all as UNAVAILABLE, which callers
    /// retry), within the patience, not after the keep-alive's 25 s.
    #[tokio::test]
    async fn garbage_silence_and_a_call_given_up_on_move_to_the_next_coordinator() {
        let up = serving().await;
        let check = || HealthCheckRequest { service: String::new() };
        for (what, name) in [(Misbehaviour::Garbage, "garbage"), (Misbehaviour::Silent, "silent")] {
            let bad = misbehaving(what).await;
            let failover = Failover::new(&ClientSecurity::default(), &[bad.clone(), up.clone()]).unwrap().with_patience(std::time::Duration::from_millis(500));
            let mut client = HealthClient::new(failover.clone());
            let start = std::time::Instant::now();
            let e = client.check(check()).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unavailable, "{name}: {e:?}");
            assert!(e.message().contains(&bad), "{name}: the message names the coordinator: {}", e.message());
            assert!(start.elapsed() < std::time::Duration::from_secs(5), "{name}: {:?}", start.elapsed());
            assert_eq!(failover.current_url(), up, "{name}");
            client.check(check()).await.unwrap_or_else(|e| panic!("{name}: the next call reaches the other: {e:?}"));
        }
        // A heartbeat gives up after its own period, before the patience.
        let silent = misbehaving(Misbehaviour::Silent).await;
        let failover = Failover::new(&ClientSecurity::default(), &[silent, up.clone()]).unwrap().with_patience(std::time::Duration::from_secs(60));
        let mut client = HealthClient::new(failover.clone());
        assert!(tokio::time::timeout(std::time::Duration::from_millis(300), client.check(check())).await.is_err());
        assert_eq!(failover.current_url(), up, "the abandoned call moved on");
    }

    #[test]
    fn a_rotation_moves_on_once_per_unreachable_coordinator() {
        let urls: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let r = Rotation::new(&urls);
        let seen_by_other_caller = r.clone();
        assert_eq!((r.current(), r.url()), (0, "a"));
        assert!(r.unreachable(0), "the first call that failed on a moves on");
        assert!(!seen_by_other_caller.unreachable(0), "a second failure on a says nothing new");
        assert_eq!(seen_by_other_caller.url(), "b", "clones share which is current");
        assert!(r.unreachable(1) && r.unreachable(2));
        assert_eq!(r.url(), "a", "after the last, the first again");
        let one = Rotation::new(&urls[..1]);
        assert!(!one.unreachable(0));
        assert_eq!(one.url(), "a");
        assert_eq!(Rotation::new(&[]).url(), "");
    }

    #[tokio::test]
    async fn failover_needs_a_url_and_says_which_is_bad() {
        assert!(Failover::new(&ClientSecurity::default(), &[]).unwrap_err().to_string().contains("no coordinator URL"));
        let bad = Failover::new(&ClientSecurity::default(), &["http://127.0.0.1:1".into(), "not a url".into()]).unwrap_err();
        assert!(bad.to_string().contains("`not a url`"), "{bad}");
    }
}
