//! `farmctl workers [--all] [--label KEY=VALUE] [--json]` lists the
//! farm's workers with their state (online, lost, stopped, quarantined;
//! draining) and labels; `farmctl workers
//! drain|resume|forget ID` are the operator's actions (an admin token when
//! the farm has tokens).

use anyhow::Result;
use stylefarm_proto as pb;
use stylefarm_proto::labels::Labels;
use stylefarm_shared::terminal::shown;

use super::{call, Coordinators};

/// What `farmctl workers` does.
#[derive(clap::Subcommand)]
pub enum WorkersCommand {
    /// Finish the job it holds, then lease no more (until `resume`).
    Drain {
        /// The worker: its name as the list shows it, or its id.
        id: String,
    },
    /// Lease again: undoes a drain, and lifts a quarantine once its device
    /// or storage is fixed.
    Resume {
        /// The worker: its name as the list shows it, or its id.
        id: String,
    },
    /// Take a lost or stopped worker off the list now (it leaves by itself
    /// an hour after it was last heard).
    Forget {
        /// The worker: its name as the list shows it, or its id.
        id: String,
    },
}

/// A worker's state in lowercase (`online`, `lost`, …).
pub fn state_of(w: &pb::WorkerInfo) -> String {
    pb::WorkerState::try_from(w.state)
        .unwrap_or_default()
        .as_str_name()
        .to_lowercase()
}

/// Every worker, a page at a time; `include_gone` adds those gone for
/// more than an hour, replaced and forgotten.
pub async fn list_all(url: &Coordinators, include_gone: bool) -> Result<Vec<pb::WorkerInfo>> {
    let mut workers = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = pb::ListWorkersRequest {
            page_size: 0,
            page_token: page_token.clone(),
            include_gone,
        };
        let page = call(url, |mut c| {
            let r = r.clone();
            async move { c.list_workers(r).await }
        })
        .await?
        .into_inner();
        workers.extend(page.workers);
        if page.next_page_token.is_empty() {
            return Ok(workers);
        }
        page_token = page.next_page_token;
    }
}

/// One line of the list: name (what drain, resume and forget take), id,
/// device, memory, state and what it does; text from the wire escaped for
/// the terminal.
pub fn line(w: &pb::WorkerInfo, now: f64) -> String {
    let state = state_of(w);
    let doing = match pb::WorkerState::try_from(w.state).unwrap_or_default() {
        pb::WorkerState::Quarantined => w.quarantine_reason.clone(),
        pb::WorkerState::Online if w.current_job.is_empty() && w.draining => {
            "drained: leases nothing".into()
        }
        pb::WorkerState::Online if w.current_job.is_empty() => "idle".into(),
        pb::WorkerState::Online => format!(
            "on {}{}",
            w.current_job,
            if w.draining {
                " (draining: its last)"
            } else {
                ""
            }
        ),
        _ => format!(
            "last heard {} ago{}",
            age(now - w.last_seen_unix),
            if w.current_job.is_empty() {
                String::new()
            } else {
                format!(", held {}", w.current_job)
            }
        ),
    };
    // What sets it apart: the labels a worker does not set itself.
    let own: Vec<&str> = w.labels.iter().map(String::as_str).filter(|l| !l.starts_with("device=") && !l.starts_with("model=")).collect();
    format!(
        "{:<20} {:<36} {:<8} {:>6.1} GiB  {:<11} {}{}",
        shown(&w.name),
        shown(&w.worker_id),
        shown(&w.device),
        w.memory_bytes as f64 / (1u64 << 30) as f64,
        state,
        shown(&doing),
        if own.is_empty() { String::new() } else { format!("  [{}]", shown(&own.join(" "))) }
    )
}

fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

pub async fn list(url: &Coordinators, include_gone: bool, labels: &[String], as_json: bool) -> Result<()> {
    let wanted = Labels::parse(labels).map_err(anyhow::Error::msg)?;
    let mut workers = list_all(url, include_gone).await?;
    workers.retain(|w| Labels::read(&w.labels.join(",")).satisfy(&wanted));
    if as_json {
        // The contract's own JSON: a ListWorkersResponse.
        println!("{}", serde_json::to_string_pretty(&pb::ListWorkersResponse { workers, next_page_token: String::new() })?);
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    for w in &workers {
        println!("{}", line(w, now));
    }
    Ok(())
}

pub async fn act(url: &Coordinators, command: WorkersCommand) -> Result<()> {
    /// The action, apart from its worker (copied into every retried call).
    #[derive(Clone, Copy)]
    enum Action {
        Drain,
        Resume,
        Forget,
    }
    let (id, action) = match &command {
        WorkersCommand::Drain { id } => (id.clone(), Action::Drain),
        WorkersCommand::Resume { id } => (id.clone(), Action::Resume),
        WorkersCommand::Forget { id } => (id.clone(), Action::Forget),
    };
    let w = call(url, |mut c| {
        let r = pb::WorkerRef {
            worker_id: id.clone(),
        };
        async move {
            match action {
                Action::Drain => c.drain_worker(r).await,
                Action::Resume => c.resume_worker(r).await,
                Action::Forget => c.forget_worker(r).await,
            }
        }
    })
    .await?
    .into_inner();
    let said = match action {
        Action::Drain if w.current_job.is_empty() => "drained: it leases no more".to_string(),
        Action::Drain => format!("draining: it finishes {} and leases no more", w.current_job),
        Action::Resume => "leases again".to_string(),
        Action::Forget => "forgotten: off the list".to_string(),
    };
    println!("worker {} ({}): {said}", shown(&w.worker_id), state_of(&w));
    Ok(())
}

/// `farmctl workers`: the list, or an action on one.
pub async fn workers(
    url: &Coordinators,
    include_gone: bool,
    labels: &[String],
    as_json: bool,
    command: Option<WorkersCommand>,
) -> Result<()> {
    match command {
        None => list(url, include_gone, labels, as_json).await,
        Some(c) => act(url, c).await,
    }
}
