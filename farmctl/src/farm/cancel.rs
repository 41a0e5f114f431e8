//! `farmctl cancel ID`: ends a collection's remaining jobs.

use anyhow::Result;
use stylefarm_proto as pb;

use super::{client, status_err, Conn};

pub async fn cancel(url: &Conn, id: &str) -> Result<()> {
    let c = client(url).await?.cancel(pb::CollectionRef { collection_id: id.into() }).await.map_err(status_err)?.into_inner();
    let cancelled = c.jobs.iter().filter(|j| j.state == pb::JobState::Cancelled as i32).count();
    println!("cancelled {cancelled} of {} jobs (running ones stop at their next heartbeat)", c.jobs.len());
    Ok(())
}
