//! `farmctl status [ID] [--json]`: a collection's jobs (each by the start
//! of its id, which every command taking a job takes) and the bytes it
//! stores, or (no ID) the farm: its workers with their state, the
//! caller's collections and the storage in all. Rides out a coordinator
//! restart. `--json` prints the
//! contract's messages as canonical proto3 JSON (a `Collection`; without
//! ID, `{"workers": ListWorkersResponse, "collections":
//! ListCollectionsResponse}`).

use anyhow::Result;
use stylefarm_proto as pb;
use stylefarm_shared::budget::human;
use stylefarm_shared::terminal::shown;

use super::{call, Coordinators};

pub async fn status(url: &Coordinators, id: Option<&str>, json: bool) -> Result<()> {
    let Some(id) = id else { return farm(url, json).await };
    let c = super::collection(url, id).await?;
    if json {
        // The contract's own JSON: a Collection, as the dashboard's API
        // and any proto3 JSON reader see it.
        println!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(());
    }
    let state = pb::CollectionState::try_from(c.state).unwrap_or_default().label();
    let pool = if c.require.is_empty() { String::new() } else { format!(", for workers with {}", shown(&c.require.join(" "))) };
    println!("collection {} ({}), {} jobs, {state}, {} stored{pool}", c.collection_id, shown(&c.name), c.jobs.len(), human(c.stored_bytes));
    println!("{:<8}  {:<20} {:<20} {:<16} {:<10} {:>11} {:>12} {:>3}  {}", "job", "content", "style", "variant", "state", "iteration", "total loss", "try", "worker / error");
    for j in &c.jobs {
        let p = j.progress.clone().unwrap_or_default();
        let who = shown(if j.error.is_empty() { j.worker_shown() } else { &j.error });
        println!(
            "{:<8}  {:<20} {:<20} {:<16} {:<10} {:>5}/{:<5} {:>12.4e} {:>3}  {who}",
            short_id(&j.job_id), shown(&j.content_name), shown(&j.style_name), shown(c.variant_label(j.variant_index)), pb::JobState::label_of(j.state), p.iteration, p.iterations, p.total, j.attempts
        );
    }
    // Why the queue waits: its first job says.
    if let Some(first) = c.jobs.iter().find(|j| j.state == pb::JobState::Queued as i32) {
        let r = pb::JobRef { job_id: first.job_id.clone() };
        let detail = call(url, |mut c| {
            let r = r.clone();
            async move { c.get_job(r).await }
        })
        .await?
        .into_inner();
        if !detail.waiting.is_empty() {
            println!("queued: {} waits: {}", short_id(&first.job_id), shown(&detail.waiting));
        }
    }
    Ok(())
}

/// The farm at a glance: workers, then collections.
async fn farm(url: &Coordinators, json: bool) -> Result<()> {
    let workers = super::workers::list_all(url, false).await?;
    let mut collections = Vec::new();
    let mut page_token = String::new();
    let mut stored;
    loop {
        let r = pb::ListCollectionsRequest { page_size: 1000, page_token: page_token.clone() };
        let page = call(url, |mut c| {
            let r = r.clone();
            async move { c.list_collections(r).await }
        })
        .await?
        .into_inner();
        collections.extend(page.collections);
        stored = page.stored_bytes;
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let users = call(url, |mut c| async move { c.list_users(pb::ListUsersRequest {}).await }).await?.into_inner();
    if json {
        // Three of the contract's lists, each as its message's JSON.
        let v = serde_json::json!({
            "workers": pb::ListWorkersResponse { workers, next_page_token: String::new() },
            "collections": pb::ListCollectionsResponse { collections, next_page_token: String::new(), stored_bytes: stored },
            "users": users,
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
    if !users.users.is_empty() {
        println!("users with work (the next free worker goes to the first)");
        for u in &users.users {
            println!("  {}", user_line(u));
        }
    }
    println!(
        "{} collections, {} stored in all",
        collections.len(),
        human(stored)
    );
    for c in &collections {
        let n = c.counts.clone().unwrap_or_default();
        let state = pb::CollectionState::try_from(c.state).unwrap_or_default().label();
        println!(
            "  {} {:<24} {state:<9} {}/{} succeeded, {} running, {} queued, {} failed, {} stored",
            c.collection_id, shown(&c.name), n.succeeded, n.total(), n.running, n.queued, n.failed, human(c.stored_bytes)
        );
    }
    Ok(())
}

/// One user's standing: running against their share, queued, quotas.
pub fn user_line(u: &pb::UserStanding) -> String {
    let name = if u.user.is_empty() { "everyone".to_string() } else { shown(&u.user) };
    let running = match u.max_running {
        Some(max) => format!("{} running (share {:.1}, at most {max})", u.running, u.share),
        None => format!("{} running (share {:.1})", u.running, u.share),
    };
    let queued = match u.max_queued {
        Some(max) => format!("{} queued (at most {max})", u.queued),
        None => format!("{} queued", u.queued),
    };
    format!("{name:<20} {running}, {queued}, weight {}{}", u.weight, if u.you { "  (you)" } else { "" })
}

/// The first eight characters of an id: what `status` shows of a job (any
/// unique start of an id names it to every command).
pub fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}
