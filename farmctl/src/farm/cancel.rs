//! `farmctl cancel ID` ends a collection's remaining jobs, or one job when
//! ID is a job's (`--job` insists on that); `farmctl retry JOB` puts a failed job back in the
//! queue with its failure budget renewed (a cancelled one too; with `--set
//! KEY=VALUE`, with those parameters changed), and `farmctl retry --failed
//! COLLECTION` every failed job of a collection.

use anyhow::Result;
use stylefarm_proto as pb;

use super::{call, resolve, resolve_any, Coordinators, Kind};

pub async fn cancel(url: &Coordinators, id: &str, job: bool) -> Result<()> {
    let (kind, whole) = if job { (Kind::Job, resolve(url, id, Kind::Job).await?) } else { resolve_any(url, id).await? };
    let id = whole.as_str();
    if kind == Kind::Job {
        let j = call(url, |mut c| {
            let r = pb::JobRef { job_id: id.into() };
            async move { c.cancel_job(r).await }
        })
        .await?
        .into_inner();
        println!("job {} is {} (a running job stops at its next heartbeat)", j.job_id, pb::JobState::label_of(j.state));
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

/// `--set KEY=VALUE` pairs as RetryJobRequest.changes_json, each read as
/// a `--variant` pair is ([`crate::flags::key_value`]).
pub fn changes_json(pairs: &[String]) -> Result<String> {
    if pairs.is_empty() {
        return Ok(String::new());
    }
    let mut changes = serde_json::Map::new();
    for pair in pairs {
        let (key, value) = crate::flags::key_value("--set", pair).map_err(|e| anyhow::anyhow!("{e}; write KEY=VALUE, e.g. --set beta=1000"))?;
        changes.insert(key, value);
    }
    Ok(serde_json::Value::Object(changes).to_string())
}

pub async fn retry(url: &Coordinators, job: &str, set: &[String]) -> Result<()> {
    let changes = changes_json(set)?;
    let job = resolve(url, job, Kind::Job).await?;
    let job = job.as_str();
    let j = call(url, |mut c| {
        let r = pb::RetryJobRequest {
            job_id: job.into(),
            changes_json: changes.clone(),
        };
        async move { c.retry_job(r).await }
    })
    .await?
    .into_inner();
    let with = if changes.is_empty() {
        String::new()
    } else {
        format!(" with {changes}, from the start")
    };
    println!("job {} is {} again{with}", j.job_id, pb::JobState::label_of(j.state));
    Ok(())
}

pub async fn retry_failed(url: &Coordinators, collection: &str) -> Result<()> {
    let collection = resolve(url, collection, Kind::Collection).await?;
    let collection = collection.as_str();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_pairs_become_a_json_object_of_changes() {
        let pairs = [
            "beta=1e4",
            "optimizer=adam",
            "tv-weight=0",
            "style_layers=[{\"layer\":\"conv1_1\",\"weight\":1}]",
        ]
        .map(String::from);
        let v: serde_json::Value = serde_json::from_str(&changes_json(&pairs).unwrap()).unwrap();
        assert_eq!(v["beta"], 1e4);
        assert_eq!(v["optimizer"], "adam");
        assert_eq!(v["tv_weight"], 0);
        assert_eq!(v["style_layers"][0]["layer"], "conv1_1");
        assert_eq!(changes_json(&[]).unwrap(), "");
        assert!(changes_json(&["beta".to_string()])
            .unwrap_err()
            .to_string()
            .contains("KEY=VALUE"));
    }
}
