//! `farmctl watch ID`: progress bars until every job has ended. A
//! coordinator that goes away (a restart) is waited for and the watch
//! resumes from its fresh snapshot.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use stylefarm_proto as pb;
use stylefarm_shared::terminal::shown;
use tonic::Streaming;

use super::{call, Coordinators};

/// Opens the Watch stream, waiting out a coordinator that is down.
async fn open(url: &Coordinators, id: &str) -> Result<Streaming<pb::WatchEvent>> {
    Ok(call(url, |mut c| {
        let r = pb::CollectionRef { collection_id: id.into() };
        async move { c.watch(r).await }
    })
    .await?
    .into_inner())
}

/// The coordinator answered, and no reconnect will change the answer.
fn refused(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(s.code(), NotFound | PermissionDenied | Unauthenticated | InvalidArgument | FailedPrecondition | ResourceExhausted)
}

fn all_ended(c: &pb::Collection) -> bool {
    c.jobs.iter().all(|j| pb::JobState::ended(j.state))
}

/// Streams progress until every job has ended; Ok(true) if all succeeded.
pub async fn watch(url: &Coordinators, id: &str) -> Result<bool> {
    let id = super::resolve(url, id, super::Kind::Collection).await?;
    let id = id.as_str();
    let mut stream = open(url, id).await?;
    let multi = MultiProgress::new();
    let overall = multi.add(ProgressBar::new(0));
    overall.set_style(ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} jobs  ETA {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "));
    overall.set_prefix("collection");
    let job_style = ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} it  {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ");
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut states: BTreeMap<String, i32> = BTreeMap::new();
    // The collection as the stream has told it so far: a snapshot, then
    // each job as it changes (`index`: where each job sits in it).
    let mut last: Option<pb::Collection> = None;
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        let event = match stream.message().await {
            Ok(Some(e)) => e.event,
            Ok(None) if last.as_ref().is_some_and(all_ended) => break,
            // The stream broke off before the end: the coordinator went
            // away. Reconnect and go on from its snapshot.
            Ok(None) => {
                multi.suspend(|| eprintln!("watch interrupted (the stream ended early); reconnecting"));
                stream = open(url, id).await?;
                continue;
            }
            // A stream that worked and broke: the coordinator went away
            // mid-stream. A dropped connection surfaces as UNAVAILABLE,
            // UNKNOWN, CANCELLED or INTERNAL (an h2 error) depending on
            // how it dropped; only the coordinator's own refusals end the
            // watch.
            Err(s) if !refused(&s) => {
                multi.suspend(|| eprintln!("watch interrupted ({}); reconnecting", s.message()));
                stream = open(url, id).await?;
                continue;
            }
            Err(s) => anyhow::bail!("watch ended: {} ({:?})", s.message(), s.code()),
        };
        match event {
            Some(pb::watch_event::Event::Snapshot(c)) => {
                index = c.jobs.iter().enumerate().map(|(i, j)| (j.job_id.clone(), i)).collect();
                last = Some(c);
            }
            Some(pb::watch_event::Event::Changes(changes)) => {
                let Some(c) = last.as_mut() else { continue };
                for j in changes.jobs {
                    if let Some(&i) = index.get(&j.job_id) {
                        // A change carries what can change; the place and
                        // names stay as the snapshot gave them.
                        let old = &c.jobs[i];
                        let (collection_id, content_name, style_name) = (old.collection_id.clone(), old.content_name.clone(), old.style_name.clone());
                        let (content_index, style_index, variant_index) = (old.content_index, old.style_index, old.variant_index);
                        c.jobs[i] = pb::Job { collection_id, content_name, style_name, content_index, style_index, variant_index, ..j };
                    }
                }
            }
            None => continue,
        }
        let Some(c) = last.as_ref() else { continue };
        overall.set_length(c.jobs.len() as u64);
        let done = c.jobs.iter().filter(|j| pb::JobState::ended(j.state)).count();
        overall.set_position(done as u64);
        let eta = c.jobs.iter().filter_map(|j| j.progress.as_ref()).map(|p| p.eta_seconds).fold(0f64, f64::max);
        overall.set_message(format!("{eta:.0}s"));
        for j in &c.jobs {
            let label = shown(&job_label(c, j));
            if states.insert(j.job_id.clone(), j.state) != Some(j.state) && multi.is_hidden() {
                eprintln!("{label}: {}{}", pb::JobState::label_of(j.state), if j.error.is_empty() { String::new() } else { format!(" ({})", shown(&j.error)) });
            }
            let p = j.progress.clone().unwrap_or_default();
            if j.state == pb::JobState::Running as i32 {
                let bar = bars.entry(j.job_id.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(p.iterations as u64));
                    b.set_style(job_style.clone());
                    b.set_prefix(label.clone());
                    b
                });
                bar.set_length(p.iterations as u64);
                bar.set_position(p.iteration as u64);
                bar.set_message(format!("total {:.3e}  ETA {:.0}s", p.total, p.eta_seconds));
            } else if let Some(b) = bars.remove(&j.job_id) {
                b.finish_and_clear();
                multi.remove(&b);
            }
        }
    }
    overall.finish_and_clear();
    let c = last.context("the coordinator sent nothing")?;
    let ok = c.jobs.iter().filter(|j| j.state == pb::JobState::Succeeded as i32).count();
    eprintln!("{ok} of {} jobs succeeded", c.jobs.len());
    for j in c.jobs.iter().filter(|j| j.state != pb::JobState::Succeeded as i32) {
        eprintln!("  {}: {} {}", shown(&job_label(&c, j)), pb::JobState::label_of(j.state), shown(&j.error));
    }
    Ok(ok == c.jobs.len())
}

/// "photo × painting (alpha=0.001)": a job as people read it, its
/// variant by the collection's label for it.
fn job_label(c: &pb::Collection, j: &pb::Job) -> String {
    match c.variant_label(j.variant_index) {
        "" => format!("{} × {}", j.content_name, j.style_name),
        label => format!("{} × {} ({label})", j.content_name, j.style_name),
    }
}
