//! `farmctl watch ID`: progress bars until every job has ended.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use stylefarm_proto as pb;

use super::{client, state_name, status_err, Conn};

/// Streams progress until every job has ended; Ok(true) if all succeeded.
pub async fn watch(url: &Conn, id: &str) -> Result<bool> {
    let mut stream = client(url).await?.watch(pb::CollectionRef { collection_id: id.into() }).await.map_err(status_err)?.into_inner();
    let multi = MultiProgress::new();
    let overall = multi.add(ProgressBar::new(0));
    overall.set_style(ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} jobs  ETA {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "));
    overall.set_prefix("collection");
    let job_style = ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} it  {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ");
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut states: BTreeMap<String, i32> = BTreeMap::new();
    let mut last = None;
    loop {
        let c = match stream.message().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(s) => bail!("watch ended: {}", s.message()),
        };
        overall.set_length(c.jobs.len() as u64);
        let done = c.jobs.iter().filter(|j| j.state >= pb::JobState::Succeeded as i32).count();
        overall.set_position(done as u64);
        let eta = c.jobs.iter().filter_map(|j| j.progress.as_ref()).map(|p| p.eta_seconds).fold(0f64, f64::max);
        overall.set_message(format!("{eta:.0}s"));
        for j in &c.jobs {
            let label = format!("{} × {} v{}", j.content_name, j.style_name, j.variant_index);
            if states.insert(j.job_id.clone(), j.state) != Some(j.state) && multi.is_hidden() {
                eprintln!("{label}: {}{}", state_name(j.state), if j.error.is_empty() { String::new() } else { format!(" ({})", j.error) });
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
        last = Some(c);
    }
    overall.finish_and_clear();
    let c = last.context("the coordinator sent nothing")?;
    let ok = c.jobs.iter().filter(|j| j.state == pb::JobState::Succeeded as i32).count();
    eprintln!("{ok} of {} jobs succeeded", c.jobs.len());
    for j in c.jobs.iter().filter(|j| j.state != pb::JobState::Succeeded as i32) {
        eprintln!("  {} × {} v{}: {} {}", j.content_name, j.style_name, j.variant_index, state_name(j.state), j.error);
    }
    Ok(ok == c.jobs.len())
}
