//! `farmctl status ID [--json]`: a collection's jobs as a table or JSON.

use anyhow::Result;
use stylefarm_proto as pb;

use super::{client, state_name, status_err, Conn};

fn job_json(j: &pb::Job) -> serde_json::Value {
    let p = j.progress.clone().unwrap_or_default();
    serde_json::json!({
        "job_id": j.job_id, "content": j.content_name, "style": j.style_name, "variant": j.variant_index,
        "state": state_name(j.state), "attempts": j.attempts, "iteration": p.iteration, "iterations": p.iterations,
        "total_loss": p.total, "eta_seconds": p.eta_seconds, "worker": j.worker, "error": j.error,
        "output_key": j.output_key, "started_from": j.started_from,
    })
}

fn collection_json(c: &pb::Collection) -> serde_json::Value {
    serde_json::json!({
        "collection_id": c.collection_id, "name": c.name, "priority": c.priority,
        "jobs": c.jobs.iter().map(job_json).collect::<Vec<_>>(),
    })
}

pub async fn status(url: &Conn, id: &str, json: bool) -> Result<()> {
    let c = client(url).await?.get_collection(pb::CollectionRef { collection_id: id.into() }).await.map_err(status_err)?.into_inner();
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
