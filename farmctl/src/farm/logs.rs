//! `farmctl logs JOB [--attempt N] [--follow]`: what the worker logged
//! during an attempt (its `worker.log`, info and above), the latest attempt
//! by default; `--follow` prints new lines as the worker writes them (at
//! each checkpoint and at the end) until the job ends.

use std::time::Duration;

use anyhow::{bail, Result};
use stylefarm_proto as pb;
use stylefarm_shared::records::job_files::WORKER_LOG;

use super::fetch::download;
use super::{call, Coordinators};

/// The key of `worker.log` in attempt `n` of a job, from the key of any
/// file of its latest attempt (`…/attempt-<latest>/<file>`), and the
/// collection it is in.
fn log_key(job: &pb::JobDetail, files: &pb::ListJobFilesResponse, attempt: Option<u32>) -> Result<(String, String, u32)> {
    let collection = job.job.as_ref().map(|j| j.collection_id.clone()).unwrap_or_default();
    let latest = files.attempt;
    if latest == 0 {
        bail!("the job has not started yet: no attempt has a log");
    }
    let n = attempt.unwrap_or(latest);
    if n == 0 || n > latest {
        bail!("the job has attempts 1 to {latest}; there is no attempt {n}");
    }
    let Some(any) = files.files.first() else { bail!("attempt {latest} has written nothing yet") };
    let folder = any.key.strip_suffix(&any.name).unwrap_or(&any.key).trim_end_matches('/');
    let Some(job_folder) = stylefarm_shared::layout::job_of_attempt_key(folder) else {
        bail!("the coordinator named a file outside an attempt folder: {}", any.key)
    };
    let folder = stylefarm_shared::layout::attempt_in(job_folder, n);
    Ok((collection, format!("{folder}/{WORKER_LOG}"), n))
}

pub async fn logs(url: &Coordinators, job_id: &str, attempt: Option<u32>, follow: bool) -> Result<()> {
    let job_id = super::resolve(url, job_id, super::Kind::Job).await?;
    let job_id = job_id.as_str();
    let mut printed = 0;
    loop {
        let job = call(url, |mut c| {
            let r = pb::JobRef { job_id: job_id.into() };
            async move { c.get_job(r).await }
        })
        .await?
        .into_inner();
        let files = call(url, |mut c| {
            let r = pb::JobRef { job_id: job_id.into() };
            async move { c.list_job_files(r).await }
        })
        .await?
        .into_inner();
        let running = job.job.as_ref().is_some_and(|j| matches!(pb::JobState::try_from(j.state), Ok(pb::JobState::Queued | pb::JobState::Running)));
        let written = match log_key(&job, &files, attempt) {
            Ok((collection, key, _)) => download(url, &collection, &key).await.unwrap_or_default(),
            Err(e) if follow && running => {
                let _ = e;
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        // A log is rewritten whole each time: print what is new.
        if written.len() > printed {
            print!("{}", stylefarm_shared::terminal::shown_lines(&String::from_utf8_lossy(&written[printed..])));
            printed = written.len();
        } else if !follow && written.is_empty() {
            bail!("no {WORKER_LOG} in that attempt yet (the worker writes it at each checkpoint and when the attempt ends)");
        }
        if !follow || !running {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_of_any_attempt_is_found_beside_the_latest_ones_files() {
        let job = pb::JobDetail { job: Some(pb::Job { collection_id: "c1".into(), ..Default::default() }), attempts: Vec::new(), ..Default::default() };
        let files = pb::ListJobFilesResponse {
            attempt: 3,
            files: vec![pb::JobFile { key: "collections/c1/jobs/j1/attempt-3/tb/events.out".into(), name: "tb/events.out".into(), size_bytes: 1 }],
        };
        assert_eq!(log_key(&job, &files, None).unwrap().1, "collections/c1/jobs/j1/attempt-3/worker.log");
        assert_eq!(log_key(&job, &files, Some(1)).unwrap(), ("c1".into(), "collections/c1/jobs/j1/attempt-1/worker.log".into(), 1));
        assert!(log_key(&job, &files, Some(4)).unwrap_err().to_string().contains("attempts 1 to 3"));
        let none = pb::ListJobFilesResponse { attempt: 0, files: Vec::new() };
        assert!(log_key(&job, &none, None).unwrap_err().to_string().contains("not started"));
    }
}
