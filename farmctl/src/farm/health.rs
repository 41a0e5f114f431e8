//! `farmctl health`: asks the coordinator's standard gRPC health service
//! (`grpc.health.v1.Health/Check`) whether it serves; exits 0 only if it
//! does. For container health checks and scripts that wait for a farm:
//! the images carry no other gRPC client.

use anyhow::{bail, Context, Result};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::Conn;

/// `service`: empty for the whole server, or `stylefarm.v2.Farm` /
/// `stylefarm.v2.Workers`.
pub async fn health(conn: &Conn, service: &str) -> Result<()> {
    let channel = conn.security.connect(&conn.url).await.with_context(|| format!("cannot reach the coordinator at {}", conn.url))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest { service: service.to_string() })
        .await
        .with_context(|| format!("the coordinator at {} did not answer its health check", conn.url))?
        .into_inner();
    let status = ServingStatus::try_from(reply.status).unwrap_or(ServingStatus::Unknown);
    println!("{}", status.as_str_name());
    if status != ServingStatus::Serving {
        bail!("the coordinator at {} is {}", conn.url, status.as_str_name());
    }
    Ok(())
}
