//! The farm commands: `up`, `submit`, `status`, `watch`, `fetch`, `cancel`,
//! one file each. Apart from `up` (which runs a farm in this process) they
//! speak only the gRPC contract in `farm.proto`.

mod cancel;
mod fetch;
mod status;
mod submit;
mod up;
mod watch;

pub use cancel::cancel;
pub use fetch::fetch;
pub use status::status;
pub use submit::{submit, SubmitArgs};
pub use up::{up, UpArgs};
pub use watch::watch;

use anyhow::Result;
use stylefarm_proto as pb;
use stylefarm_proto::farm_client::FarmClient;
use stylefarm_shared::client::{Bearer, ClientSecurity};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Where the coordinator is and how to present ourselves to it.
pub struct Conn {
    pub url: String,
    pub security: ClientSecurity,
}

/// A `Farm` client for `conn`, with the bearer token attached.
pub async fn client(conn: &Conn) -> Result<FarmClient<InterceptedService<Channel, Bearer>>> {
    let channel = conn
        .security
        .connect(&conn.url)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (is `farmctl up` or farm-coordinator running?)"))?;
    let bearer = conn.security.bearer()?;
    Ok(FarmClient::with_interceptor(channel, bearer).max_decoding_message_size(256 << 20).max_encoding_message_size(256 << 20))
}

/// A refused call as an error a user can read.
pub fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

/// A job state as `status` and `watch` print it.
pub fn state_name(s: i32) -> &'static str {
    match pb::JobState::try_from(s) {
        Ok(pb::JobState::Queued) => "queued",
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Succeeded) => "succeeded",
        Ok(pb::JobState::Failed) => "failed",
        Ok(pb::JobState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}
