//! The farm commands: `up`, `submit`, `status`, `watch`, `fetch`, `cancel`
//! (and `retry`), `pause`/`resume`/`priority`, `delete`, `logs`, `workers`,
//! one file each. Apart from `up` (which runs a farm in this process) they
//! speak only the gRPC contract in `farm.proto`.

mod cancel;
mod delete;
mod fetch;
mod health;
mod logs;
mod status;
mod submit;
mod up;
mod update;
mod watch;
mod workers;

pub use cancel::{cancel, retry, retry_failed};
pub use fetch::fetch;
pub use health::health;
pub use logs::logs;
pub use status::status;
pub use delete::delete;
pub use submit::{expand, submit, SubmitArgs};
pub use up::{up, UpArgs};
pub use update::update;
pub use watch::watch;
pub use workers::{workers, WorkersCommand};

use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use stylefarm_proto as pb;
use stylefarm_proto::farm_client::FarmClient;
use stylefarm_shared::backoff::Backoff;
use stylefarm_shared::client::{Bearer, ClientError, ClientSecurity, Rotation};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A `Farm` client with the bearer token attached.
pub type Client = FarmClient<InterceptedService<Channel, Bearer>>;

/// How long a command waits by default for a coordinator that went away
/// (a restart, a redeploy) before it gives up (`--wait`).
pub const RIDE_OUT_SECONDS: u64 = 90;

/// Where the farm's coordinators are and how to present ourselves to them.
pub struct Coordinators {
    /// One coordinator, or several sharing one PostgreSQL database: calls
    /// go to the current one and move on when it cannot be reached (the
    /// worker's rule too).
    pub rotation: Rotation,
    pub security: ClientSecurity,
    /// How long to wait for a coordinator that does not answer.
    pub wait: Duration,
    /// Neither the coordinator nor the wait was given (flag or
    /// environment): nobody at the default address is most likely a
    /// forgotten `--coordinator`, said at once rather than after `wait`.
    pub guessed: bool,
}

impl Coordinators {
    pub fn new(urls: Vec<String>, security: ClientSecurity, wait: Duration) -> Self {
        Self { rotation: Rotation::new(&urls), security, wait, guessed: false }
    }

    /// The coordinator calls go to now.
    pub fn url(&self) -> &str {
        self.rotation.url()
    }

    /// Every coordinator, in the order they are tried.
    pub fn urls(&self) -> &[String] {
        self.rotation.urls()
    }
}

/// A `Farm` client for the current coordinator of `conn`, with the bearer
/// token attached.
async fn connect(conn: &Coordinators) -> Result<Client, ClientError> {
    let channel = conn.security.connect(conn.url()).await?;
    let bearer = conn.security.bearer()?;
    Ok(FarmClient::with_interceptor(channel, bearer).max_decoding_message_size(256 << 20).max_encoding_message_size(256 << 20))
}

/// Whether a failed connection may work later: nobody listening, a reset,
/// a timeout, a name not resolving yet — not a TLS or configuration
/// problem, which no wait will fix.
fn may_come_back(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable { reason, .. } => {
            let r = reason.to_lowercase();
            !["certificate", "tls", "handshake", "invalid"].iter().any(|w| r.contains(w))
        }
        _ => false,
    }
}

/// Whether a failed call is worth retrying once the coordinator is back.
/// (Not UNKNOWN: that is also what a TLS/plaintext mismatch looks like,
/// which no wait will fix.)
pub fn transient(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable
}

/// Whether a failed call's status was made by the client from a transport
/// failure (it carries the error as its source) rather than sent by a
/// coordinator.
fn from_transport(s: &tonic::Status) -> bool {
    std::error::Error::source(s).is_some()
}

/// Runs `op` on a fresh client, riding out a coordinator that is down or
/// restarting: connection failures and UNAVAILABLE are retried with capped
/// backoff for up to `conn.wait`, each retry on the next coordinator when
/// several are given; any other refusal returns at once.
pub async fn call<T, F, Fut>(conn: &Coordinators, mut op: F) -> Result<T>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + conn.wait;
    let mut backoff = Backoff::default();
    // A connection that breaks right after it was made (a coordinator
    // still starting, or killed again) shows as UNKNOWN "transport error",
    // and so does a plaintext client at a TLS port, which no wait fixes:
    // the first few are retried, then it is taken as final.
    let mut broken_connections = 0;
    let mut tried = 0;
    loop {
        let at = conn.rotation.current();
        let error = match connect(conn).await {
            Ok(c) => match op(c).await {
                Ok(v) => return Ok(v),
                Err(s) if transient(&s) => anyhow::anyhow!("{} ({:?})", s.message(), s.code()),
                Err(s) if s.code() == tonic::Code::Unknown && s.message().contains("transport error") && broken_connections < 3 => {
                    broken_connections += 1;
                    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
                }
                // With several coordinators, a failure of the connection
                // itself (garbage, an HTTP/2 protocol error: a status made
                // here, not sent by a coordinator) is that coordinator's
                // fault: the next one is tried, a few rounds at most.
                Err(s) if conn.urls().len() > 1 && from_transport(&s) && broken_connections < 3 * conn.urls().len() => {
                    broken_connections += 1;
                    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
                }
                Err(s) => return Err(status_err(s)),
            },
            Err(e) if may_come_back(&e) && conn.guessed => {
                return Err(anyhow::anyhow!(e).context(format!(
                    "no coordinator answers at {}, the default: name yours with --coordinator URL (or STYLEFARM_COORDINATOR), or start a local farm with `farmctl up`; --wait S waits for one that is starting",
                    conn.url()
                )));
            }
            Err(e) if may_come_back(&e) => anyhow::anyhow!(e),
            Err(e) => return Err(anyhow::anyhow!(e)),
        };
        // Another coordinator may answer at once: each is tried before
        // the next wait.
        let failed = conn.urls()[at].clone();
        conn.rotation.unreachable(at);
        tried += 1;
        if tried < conn.urls().len() {
            eprintln!("coordinator {failed} unreachable ({error:#}); trying {}", conn.url());
            continue;
        }
        tried = 0;
        let delay = backoff.next_delay();
        if tokio::time::Instant::now() + delay > deadline {
            return Err(error.context(format!(
                "the coordinator at {} did not answer within {} s (is `farmctl up` or farm-coordinator running there? --wait sets how long to wait)",
                conn.urls().join(", "),
                conn.wait.as_secs()
            )));
        }
        eprintln!("coordinator unreachable ({error:#}); retrying in {delay:.1?}");
        tokio::time::sleep(delay).await;
    }
}

/// The collection `arg` names (a whole id, or a unique start of one),
/// read whole.
pub async fn collection(conn: &Coordinators, arg: &str) -> Result<pb::Collection> {
    let id = resolve(conn, arg, Kind::Collection).await?;
    let r = pb::CollectionRef { collection_id: id };
    Ok(call(conn, |mut c| {
        let r = r.clone();
        async move { c.get_collection(r).await }
    })
    .await?
    .into_inner())
}

/// What an id argument names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Collection,
    Job,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Collection => "collection",
            Kind::Job => "job",
        }
    }
}

/// The whole id and the kind of what `arg` names: an id, or a unique start
/// of one (at least 4 characters), as the page takes them
/// (`Farm.ResolveId`).
pub async fn resolve_any(url: &Coordinators, arg: &str) -> Result<(Kind, String)> {
    let found = call(url, |mut c| {
        let r = pb::IdPrefix { prefix: arg.into() };
        async move { c.resolve_id(r).await }
    })
    .await?
    .into_inner();
    let kind = if found.kind == Kind::Job.as_str() { Kind::Job } else { Kind::Collection };
    Ok((kind, found.id))
}

/// Whether `arg` is a whole id (a UUID), which needs no lookup.
fn is_whole_id(arg: &str) -> bool {
    uuid::Uuid::try_parse(arg).is_ok_and(|u| u.hyphenated().to_string() == arg)
}

/// The whole id of the `want` that `arg` names (see [`resolve_any`]); an
/// error naming what it is when it names something else. A whole id is
/// taken as it is (the call it is for says if there is no such thing; a
/// repeated delete of a deleted collection stays OK).
pub async fn resolve(url: &Coordinators, arg: &str, want: Kind) -> Result<String> {
    if is_whole_id(arg) {
        return Ok(arg.to_string());
    }
    match resolve_any(url, arg).await? {
        (kind, id) if kind == want => Ok(id),
        (kind, id) => anyhow::bail!("{arg} is a {}'s id ({id}), not a {}'s", kind.as_str(), want.as_str()),
    }
}

/// A refused call as an error a user can read.
pub fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

