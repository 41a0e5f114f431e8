//! `farmctl status [ID] [--json]`: a collection's jobs, or (no ID) the
//! farm: its workers with their state and the caller's
//! collections. Rides out a coordinator restart.

use anyhow::Result;
use stylefarm_proto as pb;

use super::{call, state_name, Conn};

fn job_json(j: &pb::Job) -> serde_json::Value {
    let p = j.progress.clone().unwrap_or_default();
    serde_json::json!({
        "job_id": j.job_id, "content": j.content_name, "style": j.style_name, "variant": j.variant_index,
        "state": state_name(j.state), "attempts": j.attempts, "iteration": p.iteration, "iterations": p.iterations,
        "total_loss": p.total, "eta_seconds": p.eta_seconds, "worker": j.worker, "error": j.error,
        "output_key": j.output_key, "started_from": j.started_from, "failures": j.failures, "requeues": j.requeues,
    })
}

fn collection_json(c: &pb::Collection) -> serde_json::Value {
    let n = c.counts.clone().unwrap_or_default();
    serde_json::json!({
        "collection_id": c.collection_id, "name": c.name, "priority": c.priority,
        "counts": {"queued": n.queued, "running": n.running, "succeeded": n.succeeded, "failed": n.failed, "cancelled": n.cancelled},
        "jobs": c.jobs.iter().map(job_json).collect::<Vec<_>>(),
    })
}

pub async fn status(url: &Conn, id: Option<&str>, json: bool) -> Result<()> {
    let Some(id) = id else { return farm(url, json).await };
    let c = call(url, |mut c| {
        let r = pb::CollectionRef { collection_id: id.into() };
        async move { c.get_collection(r).await }
    })
    .await?
    .into_inner();
    if json {
        println!("{}", serde_json::to_string_pretty(&collection_json(&c))?);
        return Ok(());
    }
    println!("collection {} ({}), {} jobs", c.collection_id, c.name, c.jobs.len());
    println!("{:<20} {:<20} {:>3} {:<10} {:>11} {:>12} {:>3}  {}", "content", "style", "var", "state", "iteration", "total loss", "try", "worker / error");
    for j in &c.jobs {
        let p = j.progress.clone().unwrap_or_default();
        let who = if j.error.is_empty() { j.worker.clone() } else { j.error.clone() };
        println!(
            "{:<20} {:<20} {:>3} {:<10} {:>5}/{:<5} {:>12.4e} {:>3}  {who}",
            j.content_name, j.style_name, j.variant_index, state_name(j.state), p.iteration, p.iterations, p.total, j.attempts
        );
    }
    Ok(())
}

/// The farm at a glance: workers, then collections.
async fn farm(url: &Conn, json: bool) -> Result<()> {
    let workers = super::workers::list_all(url, false).await?;
    let mut collections = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = pb::ListCollectionsRequest { page_size: 1000, page_token: page_token.clone() };
        let page = call(url, |mut c| {
            let r = r.clone();
            async move { c.list_collections(r).await }
        })
        .await?
        .into_inner();
        collections.extend(page.collections);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if json {
        let v = serde_json::json!({
            "workers": workers.iter().map(super::workers::json).collect::<Vec<_>>(),
            "collections": collections.iter().map(collection_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{} workers", workers.len());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    for w in &workers {
        println!("  {}", super::workers::line(w, now));
    }
    println!("{} collections", collections.len());
    for c in &collections {
        let n = c.counts.clone().unwrap_or_default();
        let all = n.queued + n.running + n.succeeded + n.failed + n.cancelled;
        println!("  {} {:<24} {}/{all} succeeded, {} running, {} queued, {} failed", c.collection_id, c.name, n.succeeded, n.running, n.queued, n.failed);
    }
    Ok(())
}
