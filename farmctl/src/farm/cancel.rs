//! `farmctl cancel ID [--job]` ends a collection's remaining jobs (or, with
//! `--job`, one job); `farmctl retry JOB` puts a failed job back in the
//! queue with its failure budget renewed, and `farmctl retry --failed
//! COLLECTION` every failed job of a collection.

use anyhow::Result;
use stylefarm_proto as pb;

use super::{call, state_name, Conn};

pub async fn cancel(url: &Conn, id: &str, job: bool) -> Result<()> {
    if job {
        let j = call(url, |mut c| {
            let r = pb::JobRef { job_id: id.into() };
            async move { c.cancel_job(r).await }
        })
        .await?
        .into_inner();
        println!("job {} is {} (a running job stops at its next heartbeat)", j.job_id, state_name(j.state));
        return Ok(());
    }
    let c = call(url, |mut c| {
        let r = pb::CollectionRef { collection_id: id.into() };
        async move { c.cancel(r).await }
    })
    .await?
    .into_inner();
    let cancelled = c.jobs.iter().filter(|j| j.state == pb::JobState::Cancelled as i32).count();
    println!("cancelled {cancelled} of {} jobs (running ones stop at their next heartbeat)", c.jobs.len());
    Ok(())
}

pub async fn retry(url: &Conn, job: &str) -> Result<()> {
    let j = call(url, |mut c| {
        let r = pb::JobRef { job_id: job.into() };
        async move { c.retry_job(r).await }
    })
    .await?
    .into_inner();
    println!("job {} is {} again", j.job_id, state_name(j.state));
    Ok(())
}

pub async fn retry_failed(url: &Conn, collection: &str) -> Result<()> {
    let c = call(url, |mut c| {
        let r = pb::CollectionRef { collection_id: collection.into() };
        async move { c.retry_failed(r).await }
    })
    .await?
    .into_inner();
    let n = c.counts.unwrap_or_default();
    println!("collection {}: {} queued, {} running, {} succeeded, {} failed, {} cancelled", c.collection_id, n.queued, n.running, n.succeeded, n.failed, n.cancelled);
    Ok(())
}
