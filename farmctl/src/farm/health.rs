//! `farmctl health`: asks the coordinator's standard gRPC health service
//! (`grpc.health.v1.Health/Check`) whether it serves; exits 0 only if it
//! does (every one of them, when several are given). For container health checks and scripts that wait for a farm:
//! the images carry no other gRPC client.

use anyhow::{bail, Context, Result};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::Coordinators;

/// `service`: empty for the whole server, or `stylefarm.v2.Farm` /
/// `stylefarm.v2.Workers`.
/// Prints each coordinator's status (prefixed by its URL when there are
/// several).
pub async fn health(conn: &Coordinators, service: &str) -> Result<()> {
    if let [url] = &conn.urls()[..] {
        let status = check(conn, url, service).await?;
        println!("{}", status.as_str_name());
        if status != ServingStatus::Serving {
            bail!("the coordinator at {url} is {}", status.as_str_name());
        }
        return Ok(());
    }
    let mut not_serving = Vec::new();
    for url in conn.urls() {
        match check(conn, url, service).await {
            Ok(status) => {
                println!("{url} {}", status.as_str_name());
                if status != ServingStatus::Serving {
                    not_serving.push(format!("the coordinator at {url} is {}", status.as_str_name()));
                }
            }
            Err(e) => {
                println!("{url} UNREACHABLE");
                not_serving.push(format!("{e:#}"));
            }
        }
    }
    if !not_serving.is_empty() {
        bail!("{}", not_serving.join("; "));
    }
    Ok(())
}

/// One coordinator's answer.
async fn check(conn: &Coordinators, url: &str, service: &str) -> Result<ServingStatus> {
    let channel = conn.security.connect(url).await.with_context(|| format!("cannot reach the coordinator at {url}"))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest { service: service.to_string() })
        .await
        .with_context(|| format!("the coordinator at {url} did not answer its health check"))?
        .into_inner();
    Ok(ServingStatus::try_from(reply.status).unwrap_or(ServingStatus::Unknown))
}
