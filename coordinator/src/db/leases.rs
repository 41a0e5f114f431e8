//! A worker's lease and its calls under it: Lease, Heartbeat, Complete,
//! Fail, Release, and the sweep that lapses leases nobody renews. Each
//! checks who is calling under which fencing token, lets
//! [`machine::next`] decide the step, applies it and records the attempt.

use std::collections::HashMap;

use stylefarm_proto as pb;
use stylefarm_proto::labels::Labels;

use super::sql::{self, args, Conn, Optional, Row};
use super::{backoff, now, state_of, CallError, Db, Rules, JOB_PARAMS, JOB_STYLE_KEYS, PAUSED_PRIO, QUEUED, RUNNING, STALL_SECONDS, STYLE_KEY_SEPARATOR};
use crate::machine::{self, Budget, Cause, Event, State};
use crate::schedule::{self, Policy, Waiting};

/// The next job of one user (`?3`) to lease: their queue's order
/// (priority, then collection, then job, all on the row) walked along the
/// partial index `jobs_fair`, skipping jobs in their retry backoff or
/// needing more memory than the worker has, and, given `only`
/// requirements (`?4` on), jobs that require anything else. Its cost does
/// not grow with the queue of jobs this worker can take.
pub(super) fn lease_query(only: usize) -> std::borrow::Cow<'static, str> {
    static QUERY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let query = |requirement: &str| {
        format!(
            "SELECT id, collection_id, content_key, {JOB_STYLE_KEYS}, {JOB_PARAMS}, width, height,
                    checkpoint_every, snapshot_every, resume_key, resume_iteration, attempts, state
             FROM jobs INDEXED BY jobs_fair
             WHERE state = {QUEUED} AND owner = ?3 AND prio < {PAUSED_PRIO} AND not_before <= ?1 AND (CAST(?2 AS BIGINT) = 0 OR min_memory <= ?2){requirement}
             ORDER BY prio, cseq, seq LIMIT 1 FOR UPDATE SKIP LOCKED"
        )
    };
    if only == 0 {
        return QUERY.get_or_init(|| query("")).as_str().into();
    }
    let marks: Vec<String> = (4..4 + only).map(|i| format!("?{i}")).collect();
    query(&format!(" AND require_labels IN ({})", marks.join(", "))).into()
}

/// Whether any queued job requires labels: one probe of
/// `jobs_by_requirement` past the jobs that require none (the common
/// case, which then reads nothing more).
pub(super) fn any_requirement_query() -> &'static str {
    static QUERY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    QUERY.get_or_init(|| format!("SELECT 1 FROM jobs INDEXED BY jobs_by_requirement WHERE state = {QUEUED} AND require_labels > '' LIMIT 1"))
}

/// The requirements of queued jobs, each once: `jobs_by_requirement`
/// walked one value at a time (a loose index scan), so the cost grows
/// with the pools asked for, not the queue.
pub(super) fn requirements_query() -> &'static str {
    static QUERY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    QUERY.get_or_init(|| {
        format!(
            "WITH RECURSIVE needs(need) AS (
                 SELECT (SELECT require_labels FROM jobs INDEXED BY jobs_by_requirement WHERE state = {QUEUED} ORDER BY require_labels LIMIT 1)
                 UNION ALL
                 SELECT (SELECT j.require_labels FROM jobs j INDEXED BY jobs_by_requirement WHERE j.state = {QUEUED} AND j.require_labels > needs.need ORDER BY j.require_labels LIMIT 1)
                 FROM needs WHERE needs.need IS NOT NULL
             )
             SELECT need FROM needs WHERE need IS NOT NULL"
        )
    })
}

/// The users with queued work (not paused): `jobs_fair` walked one owner
/// at a time (a loose index scan), so the cost grows with the users, not
/// the queue.
pub(super) fn waiting_query() -> &'static str {
    static QUERY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    QUERY.get_or_init(|| {
        let queued = format!("state = {QUEUED} AND prio < {PAUSED_PRIO}");
        format!(
            "WITH RECURSIVE owners(owner) AS (
                 SELECT (SELECT owner FROM jobs INDEXED BY jobs_fair WHERE {queued} ORDER BY owner LIMIT 1)
                 UNION ALL
                 SELECT (SELECT j.owner FROM jobs j INDEXED BY jobs_fair WHERE j.{queued} AND j.owner > owners.owner ORDER BY j.owner LIMIT 1)
                 FROM owners WHERE owners.owner IS NOT NULL
             )
             SELECT owner FROM owners WHERE owner IS NOT NULL"
        )
    })
}

/// The head of one user's (`?1`) queue: where their next job stands.
pub(super) fn head_query() -> &'static str {
    static QUERY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    QUERY.get_or_init(|| {
        format!("SELECT prio, cseq, seq FROM jobs INDEXED BY jobs_fair WHERE state = {QUEUED} AND owner = ?1 AND prio < {PAUSED_PRIO} ORDER BY prio, cseq, seq LIMIT 1")
    })
}

/// Each user's running jobs, from the index `jobs_running_by_owner` alone
/// (as many entries as busy workers at most).
pub(super) fn running_query() -> &'static str {
    static QUERY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    QUERY.get_or_init(|| format!("SELECT owner, CAST(COUNT(*) AS BIGINT) FROM jobs INDEXED BY jobs_running_by_owner WHERE state = {RUNNING} GROUP BY owner"))
}

/// A running job's spec again, for a worker that asks to lease while it
/// holds it (its reply was lost): the same columns as [`lease_query`].
pub(super) fn held_query() -> &'static str {
    static QUERY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    QUERY.get_or_init(|| {
        format!(
            "SELECT id, collection_id, content_key, {JOB_STYLE_KEYS}, {JOB_PARAMS}, width, height,
                    checkpoint_every, snapshot_every, resume_key, resume_iteration, attempts, state, fencing_token
             FROM jobs INDEXED BY jobs_held WHERE worker = ?1 AND state = {RUNNING} LIMIT 1"
        )
    })
}

/// A granted lease.
pub struct Leased {
    pub spec: pb::JobSpec,
    pub token: u64,
    pub attempt: u32,
}

/// A worker's call about a job, as the database needs it.
pub struct Call<'a> {
    pub worker: &'a str,
    pub job: &'a str,
    pub token: u64,
}

/// What a worker's call found.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub collection: String,
    /// The job was cancelled (heartbeats tell the worker to stop).
    pub cancelled: bool,
    /// Why its worker is told to checkpoint and give the job back (which
    /// costs the job nothing): its collection is paused, or the job was
    /// preempted.
    pub release: Option<String>,
    /// The call repeated one that had already been applied: nothing changed.
    pub repeated: bool,
}

/// The outcome an attempt's end is recorded with, per event: a repeated
/// call is recognised by it.
fn outcome_prefix(event: Event) -> &'static str {
    match event {
        Event::Complete => "succeeded",
        Event::Fail(_) => "failed",
        Event::Release => "released",
        Event::Lapse => "lease lapsed",
        Event::Heartbeat | Event::Cancel => "cancelled",
        Event::Lease | Event::Retry | Event::Rerender => "",
    }
}

impl Db {
    /// Leases the oldest queued job of the highest-priority collection
    /// that fits the worker's memory, under a fresh fencing token: a
    /// counter in the high half (so tokens only grow) and 32 random bits
    /// in the low half (so none can be guessed).
    pub fn lease(&mut self, worker: &str, rules: &Rules, policy: &Policy) -> Result<Option<Leased>, CallError> {
        let tx = self.conn.savepoint()?;
        let t = now();
        let worker_row = format!(
            "SELECT memory_bytes, quarantined, strikes, EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_held WHERE worker = ?1 AND state = {RUNNING}),
                    ended, draining, name, labels
             FROM workers WHERE id = ?1 FOR UPDATE"
        );
        type WorkerRow = (i64, bool, u32, bool, String, bool, String, String);
        let w: Option<WorkerRow> = tx
            .query_row(
                &worker_row,
                args![worker],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)),
            )
            .optional()?;
        let (memory, quarantined, strikes, holds, ended, draining, name, labels) =
            w.ok_or_else(|| CallError::NotRegistered(worker.to_string()))?;
        if !ended.is_empty() {
            return Err(CallError::Gone {
                worker: worker.to_string(),
                how: ended,
            });
        }
        if quarantined {
            return Err(CallError::Quarantined { worker: worker.to_string(), strikes });
        }
        tx.execute("UPDATE workers SET last_seen = ?1 WHERE id = ?2", args![t, worker])?;
        // One lease at a time: a worker that asks while it holds one lost
        // the reply, and gets the same lease again.
        let spec_of = |r: &Row| -> sql::Result<pb::JobSpec> {
            Ok(pb::JobSpec {
                job_id: r.get(0)?,
                collection_id: r.get(1)?,
                content_key: r.get(2)?,
                style_keys: r.get::<_, String>(3)?.split(STYLE_KEY_SEPARATOR).map(str::to_string).collect(),
                params_json: r.get(4)?,
                width: r.get(5)?,
                height: r.get(6)?,
                checkpoint_every: r.get(7)?,
                snapshot_every: r.get(8)?,
                prefix: String::new(),
                resume_key: r.get(9)?,
            })
        };
        let held = if holds {
            tx.query_row(held_query(), args![worker], |r| Ok((spec_of(r)?, r.get::<_, u32>(11)?, r.get::<_, i64>(13)? as u64))).optional()?
        } else {
            None
        };
        if let Some((mut spec, attempt, token)) = held {
            spec.prefix = crate::paths::attempt(&spec.collection_id, &spec.job_id, attempt);
            tx.commit()?;
            return Ok(Some(Leased { spec, token, attempt }));
        }
        if draining {
            tx.commit()?;
            return Ok(None);
        }
        // Whose turn it is (fair shares, quotas), then the first of their
        // jobs this worker can take.
        let owners: Vec<String> = tx.query_map(waiting_query(), args![], |r| r.get(0))?;
        // One user waiting with no running quota: their turn whatever
        // runs, so nothing more is read (the common case costs one probe).
        let contested = owners.len() > 1 || owners.iter().any(|o| policy.max_running(o).is_some());
        let mut waiting = Vec::with_capacity(owners.len());
        for owner in owners {
            let head = if contested { tx.query_row(head_query(), args![owner], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))? } else { (0, 0, 0) };
            waiting.push(Waiting { owner, head });
        }
        let running: HashMap<String, u32> = if contested {
            tx.query_map(running_query(), args![], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u32)))?.into_iter().collect()
        } else {
            HashMap::new()
        };
        // Pools: the requirements queued that this worker meets (all of
        // them, or none asked for, the common case, needs no filter).
        let pooled = tx.query_row(any_requirement_query(), args![], |_| Ok(())).optional()?.is_some();
        let needs: Vec<String> = if pooled { tx.query_map(requirements_query(), args![], |r| r.get(0))? } else { Vec::new() };
        let labels = Labels::read(&labels);
        let met: Vec<String> = needs.iter().filter(|n| labels.satisfy(&Labels::read(n))).cloned().collect();
        if pooled && met.is_empty() {
            tx.commit()?;
            return Ok(None);
        }
        let only = if met.len() == needs.len() { 0 } else { met.len() };
        let query = lease_query(only);
        let mut row = None;
        for owner in schedule::order(&waiting, &running, policy) {
            let mut values = args![t, memory, owner].to_vec();
            if only > 0 {
                values.extend(met.iter().map(sql::ToValue::to_value));
            }
            row = tx
                .query_row(&query, &values, |r| Ok((spec_of(r)?, r.get::<_, u32>(10)?, r.get::<_, u32>(11)?, state_of(r.get(12)?)?)))
                .optional()?;
            if row.is_some() {
                break;
            }
        }
        let Some((mut spec, resume_iteration, attempts, state)) = row else {
            tx.commit()?;
            return Ok(None);
        };
        let budget = Budget { failures: 0, max_failures: rules.max_failures, requeues: 0, max_requeues: rules.max_requeues };
        let step = machine::next(state, Event::Lease, budget).map_err(|refusal| CallError::Refused { job: spec.job_id.clone(), refusal })?;
        let token = (Self::next(&tx, "fencing_token")? << 32) | rand::random::<u32>() as u64;
        let attempt = attempts + 1;
        spec.prefix = crate::paths::attempt(&spec.collection_id, &spec.job_id, attempt);
        tx.execute(
            "UPDATE jobs SET state = ?1, attempts = ?2, worker = ?3, fencing_token = ?4, lease_deadline = ?5, started_from = ?6, error = '',
                             worker_name = ?8
             WHERE id = ?7",
            args![step.to.to_wire() as i32, attempt, worker, token as i64, t + rules.lease_seconds, resume_iteration, spec.job_id, name],
        )?;
        tx.execute(
            "INSERT INTO attempts (job_id, attempt, worker, fencing_token, started, resumed_from, worker_name) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            args![spec.job_id, attempt, worker, token as i64, t, resume_iteration, name],
        )?;
        tx.commit()?;
        self.touched.push(spec.job_id.clone());
        Ok(Some(Leased { spec, token, attempt }))
    }

    /// The attempt folder of the lease `call` quotes, if it is that
    /// worker's: where its files are.
    pub fn attempt_folder(&self, call: &Call) -> Result<String, CallError> {
        let row: Option<(String, u32, String)> = self
            .conn
            .query_row(
                "SELECT j.collection_id, a.attempt, a.worker FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.job_id = ?1 AND a.fencing_token = ?2",
                args![call.job, call.token as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        match row {
            None => Err(self.unknown(call)?),
            Some((_, _, w)) if w != call.worker => Err(CallError::WrongWorker { job: call.job.to_string() }),
            Some((collection, attempt, _)) => Ok(crate::paths::attempt(&collection, call.job, attempt)),
        }
    }

    /// Why a call's (job, token) has no attempt: no such job, or a token
    /// that was never this job's.
    fn unknown(&self, call: &Call) -> sql::Result<CallError> {
        let exists: Option<i64> = self.conn.query_row("SELECT 1 FROM jobs WHERE id = ?1", args![call.job], |r| r.get(0)).optional()?;
        Ok(match exists {
            None => CallError::NoJob(call.job.to_string()),
            Some(_) => CallError::Stale { job: call.job.to_string(), why: String::new() },
        })
    }

    /// Applies a worker's event to the job its lease names, after checking
    /// that the lease is this worker's and current. A call that repeats one
    /// already applied under the same token (a retry after a lost reply)
    /// is answered as before and changes nothing. `apply` does the event's
    /// own writes (progress, checkpoint, output) when the step is taken.
    pub(super) fn worker_event(
        &mut self,
        call: &Call,
        event: Event,
        rules: &Rules,
        outcome: &str,
        reported: &[(&str, u32)],
        apply: impl FnOnce(&Conn, State) -> sql::Result<()>,
    ) -> Result<Answer, CallError> {
        let tx = self.conn.savepoint()?;
        type JobRow = (i32, i64, String, u32, u32, u32, i64, f64, String);
        let job: Option<JobRow> = tx
            .query_row(
                "SELECT state, fencing_token, collection_id, failures, requeues, iterations, prio, preempted, preempted_why FROM jobs WHERE id = ?1 FOR UPDATE",
                args![call.job],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?)),
            )
            .optional()?;
        let (state, current, collection, failures, requeues, total, prio, preempted, preempted_why) = job.ok_or_else(|| CallError::NoJob(call.job.to_string()))?;
        let state = state_of(state)?;
        let attempt: Option<(String, Option<String>, f64)> = tx
            .query_row("SELECT worker, outcome, started FROM attempts WHERE job_id = ?1 AND fencing_token = ?2", args![call.job, call.token as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((holder, ended, started)) = attempt else {
            return Err(CallError::Stale { job: call.job.to_string(), why: String::new() });
        };
        // Given back when its collection is paused, or when it was
        // preempted during this attempt.
        let preempted = preempted > 0.0 && preempted >= started;
        let release = if prio >= PAUSED_PRIO {
            Some("its collection was paused".to_string())
        } else {
            preempted.then(|| preempted_why.clone())
        };
        if holder != call.worker {
            return Err(CallError::WrongWorker { job: call.job.to_string() });
        }
        let cancelled = state == State::Cancelled;
        if let Some(ended) = ended {
            // This attempt is over. The same call again is answered as the
            // first time; anything else is too late.
            let same = !outcome_prefix(event).is_empty() && ended.starts_with(outcome_prefix(event));
            if same || (cancelled && event == Event::Heartbeat) {
                return Ok(Answer { collection, cancelled, release, repeated: true });
            }
            return Err(CallError::Stale { job: call.job.to_string(), why: format!(" (that attempt ended: {ended})") });
        }
        if current as u64 != call.token {
            return Err(CallError::Stale { job: call.job.to_string(), why: String::new() });
        }
        // Checked only under the current lease: a stale caller is told it
        // is stale (stop), not what it got wrong.
        if let Some((name, n)) = reported.iter().find(|(_, n)| *n > total) {
            return Err(CallError::Invalid { job: call.job.to_string(), what: format!("{name} {n} is past the job's {total} iterations") });
        }
        let budget = Budget { failures, max_failures: rules.max_failures, requeues, max_requeues: rules.max_requeues };
        let step = machine::next(state, event, budget).map_err(|refusal| CallError::Refused { job: call.job.to_string(), refusal })?;
        let t = now();
        if step.to != state || step.spend_failure || step.spend_requeue {
            let not_before = if step.backoff { t + backoff(failures + 1) } else { 0.0 };
            tx.execute(
                "UPDATE jobs SET state = ?1, failures = failures + ?2, requeues = requeues + ?3, not_before = ?4 WHERE id = ?5",
                args![step.to.to_wire() as i32, step.spend_failure as i32, step.spend_requeue as i32, not_before, call.job],
            )?;
        }
        apply(&tx, step.to)?;
        let ends_attempt = event != Event::Heartbeat || cancelled;
        if ends_attempt {
            let preempted_outcome = format!("{outcome} ({preempted_why})");
            let outcome = match (cancelled, event == Event::Release && preempted) {
                (true, _) => "cancelled",
                (false, true) => preempted_outcome.as_str(),
                (false, false) => outcome,
            };
            tx.execute(
                "UPDATE attempts SET ended = ?1, outcome = ?2 WHERE job_id = ?3 AND fencing_token = ?4",
                args![t, outcome, call.job, call.token as i64],
            )?;
        }
        let strike = match event {
            Event::Complete => Some(false),
            Event::Fail(Cause::NotTheJob) => Some(true),
            // A lapse is not the worker's call: its last call stays its
            // last sign of life.
            Event::Lapse => Some(Self::silent_while_others_heard(&tx, call.worker, rules)?).filter(|&s| s),
            _ => None,
        };
        if event != Event::Lapse {
            tx.execute("UPDATE workers SET last_seen = ?1 WHERE id = ?2", args![t, call.worker])?;
        }
        if let Some(strike) = strike {
            Self::record(&tx, call.worker, call.job, strike, event, rules)?;
        }
        tx.commit()?;
        self.touched.push(call.job.to_string());
        Ok(Answer { collection, cancelled, release, repeated: false })
    }

    /// Whether a lapsed lease is evidence against its worker: the
    /// coordinator heard another worker at least half a lease after this
    /// one's last call, so it was answering while this worker was silent.
    /// Alone on the farm, or with everyone silent at once, a lapse says
    /// more about the coordinator or the network than about the worker.
    fn silent_while_others_heard(tx: &Conn, worker: &str, rules: &Rules) -> sql::Result<bool> {
        tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM workers o WHERE o.id != ?1 AND o.last_seen > (SELECT last_seen FROM workers WHERE id = ?1) + ?2)",
            args![worker, rules.lease_seconds / 2.0],
            |r| r.get(0),
        )
    }

    /// A worker's record: attempts in a row lost to the worker itself (its
    /// own Fail(WORKER), or a lease it let lapse while others were heard)
    /// are strikes, each with its job; a success clears them. A job's own
    /// errors do not count: its budget pays for those. Quarantine needs
    /// `quarantine_after` strikes in a row and evidence against the worker:
    /// each was its own Fail(WORKER), or they fell on at least two
    /// different jobs. Leases that lapse on one job alone (a job whose
    /// lease no worker can even read) are the job's fault, and its requeue
    /// budget ends it.
    fn record(tx: &Conn, worker: &str, job: &str, strike: bool, event: Event, rules: &Rules) -> sql::Result<()> {
        if !strike {
            tx.execute("UPDATE workers SET strikes = 0, strike_jobs = '' WHERE id = ?1", args![worker])?;
            return Ok(());
        }
        let (strikes, jobs): (u32, String) =
            tx.query_row("SELECT strikes, strike_jobs FROM workers WHERE id = ?1", args![worker], |r| Ok((r.get(0)?, r.get(1)?)))?;
        // The streak's last `quarantine_after` strikes, each `W:job` (its
        // own Fail) or `L:job` (a lapse).
        let (strikes, mut jobs) = (strikes + 1, jobs.split_whitespace().map(str::to_string).collect::<Vec<_>>());
        jobs.push(format!("{}:{job}", if event == Event::Lapse { 'L' } else { 'W' }));
        let keep = jobs.len().saturating_sub(rules.quarantine_after as usize);
        jobs.drain(..keep);
        let mut distinct: Vec<&str> = jobs.iter().map(|j| &j[2..]).collect();
        distinct.sort();
        distinct.dedup();
        let own = jobs.iter().all(|j| j.starts_with("W:"));
        let quarantine = strikes >= rules.quarantine_after && (own || distinct.len() >= 2);
        let what = if event == Event::Lapse { "lease lapsed while other workers were heard" } else { "it reported its own failure (WORKER)" };
        let reason = if quarantine {
            let why = if own { "each reported as its own failure (WORKER)".to_string() } else { format!("on {} different jobs", distinct.len()) };
            format!("{strikes} attempts in a row lost on this worker, {why}; the last: {what} (jobs {})", distinct.join(", "))
        } else {
            String::new()
        };
        tx.execute(
            "UPDATE workers SET strikes = ?2, strike_jobs = ?3, quarantined = GREATEST(quarantined, ?4), quarantine_reason = CASE WHEN CAST(?4 AS BIGINT) != 0 THEN ?5 ELSE quarantine_reason END
             WHERE id = ?1",
            args![worker, strikes, jobs.join(" "), quarantine, reason],
        )?;
        Ok(())
    }

    /// Extends the lease, records progress and (given its full key) a
    /// checkpoint.
    pub fn heartbeat(&mut self, call: &Call, r: &pb::HeartbeatRequest, checkpoint_key: Option<&str>, rules: &Rules) -> Result<Answer, CallError> {
        let p = r.progress.clone().unwrap_or_default();
        let deadline = now() + rules.lease_seconds;
        let reported = [("progress.iteration", p.iteration), ("progress.iterations", p.iterations), ("checkpoint_iteration", r.checkpoint_iteration)];
        self.worker_event(call, Event::Heartbeat, rules, "cancelled", &reported, |tx, to| {
            if to != State::Running {
                return Ok(());
            }
            tx.execute(
                "UPDATE jobs SET lease_deadline = ?1, iteration = ?2, content = ?3, style = ?4, tv = ?5, total = ?6, eta = ?7 WHERE id = ?8",
                args![deadline, p.iteration, p.content, p.style, p.tv, p.total, p.eta_seconds, call.job],
            )?;
            if let Some(from) = r.resumed_from {
                tx.execute("UPDATE jobs SET started_from = ?1 WHERE id = ?2", args![from, call.job])?;
                tx.execute("UPDATE attempts SET resumed_from = ?1 WHERE job_id = ?2 AND fencing_token = ?3", args![from, call.job, call.token as i64])?;
            }
            if let Some(key) = checkpoint_key {
                tx.execute("UPDATE jobs SET resume_key = ?1, resume_iteration = ?2 WHERE id = ?3", args![key, r.checkpoint_iteration, call.job])?;
            }
            Ok(())
        })
    }

    /// Marks the job done, its output at `output_key` (checked to exist by
    /// the caller).
    pub fn complete(&mut self, call: &Call, output_key: &str, p: &pb::Progress, rules: &Rules) -> Result<Answer, CallError> {
        self.worker_event(call, Event::Complete, rules, "succeeded", &[], |tx, _| {
            tx.execute(
                "UPDATE jobs SET output_key = ?1, iteration = ?2, content = ?3, style = ?4, tv = ?5, total = ?6, eta = 0, error = '' WHERE id = ?7",
                args![output_key, p.iteration, p.content, p.style, p.tv, p.total, call.job],
            )?;
            Ok(())
        })
    }

    /// Records a failed attempt, charged by cause. An out-of-memory failure
    /// also raises the memory the job asks of its next worker above this
    /// one's.
    pub fn fail(&mut self, call: &Call, kind: pb::FailureKind, message: &str, rules: &Rules) -> Result<Answer, CallError> {
        let cause = match kind {
            pb::FailureKind::BadInput => Cause::BadInput,
            pb::FailureKind::Worker => Cause::NotTheJob,
            pb::FailureKind::OutOfMemory | pb::FailureKind::Internal | pb::FailureKind::Unspecified => Cause::Job,
        };
        let outcome = format!("failed ({}): {message}", kind.as_str_name());
        self.worker_event(call, Event::Fail(cause), rules, &outcome, &[], |tx, to| {
            if to == State::Cancelled {
                return Ok(());
            }
            let error = if to == State::Failed {
                match cause {
                    Cause::BadInput => message.to_string(),
                    Cause::Job => format!("{message} (failed {} times; given up)", rules.max_failures),
                    Cause::NotTheJob => format!("{message} (lost {} times; given up)", rules.max_requeues + 1),
                }
            } else {
                message.to_string()
            };
            tx.execute("UPDATE jobs SET error = ?1 WHERE id = ?2", args![error, call.job])?;
            if kind == pb::FailureKind::OutOfMemory {
                tx.execute(
                    "UPDATE jobs SET min_memory = GREATEST(min_memory, COALESCE((SELECT memory_bytes + 1 FROM workers WHERE id = ?1 AND memory_bytes > 0), 0)) WHERE id = ?2",
                    args![call.worker, call.job],
                )?;
            }
            Ok(())
        })
    }

    /// Gives the job back now (pre-emption), resumable from the checkpoint
    /// at `checkpoint_key`.
    pub fn release(&mut self, call: &Call, checkpoint: Option<(&str, u32)>, rules: &Rules) -> Result<Answer, CallError> {
        self.worker_event(call, Event::Release, rules, "released", &[], |tx, to| {
            if let (Some((key, iteration)), State::Queued) = (checkpoint, to) {
                tx.execute("UPDATE jobs SET resume_key = ?1, resume_iteration = ?2 WHERE id = ?3", args![key, iteration, call.job])?;
            }
            Ok(())
        })
    }

    /// Requeues every job whose lease lapsed, without spending its failure
    /// budget (up to `max_requeues`); returns the collections touched.
    ///
    /// A sweep that runs more than [`STALL_SECONDS`] after the last one
    /// found the coordinator itself behind (a blocked runtime, a backed-up
    /// state thread): nothing could be heard in that time, so running
    /// leases get it back before anything is expired — only the time no
    /// other coordinator swept either (one that did served the workers).
    pub fn expire_leases(&mut self, rules: &Rules) -> sql::Result<Vec<String>> {
        let t = now();
        let last = self.last_sweep.swap(t.to_bits(), std::sync::atomic::Ordering::Relaxed);
        let mine = (last != 0).then(|| f64::from_bits(last));
        // The farm was served until the later of this coordinator's last
        // sweep and any other's (never stalled before its first sweep).
        let served_until = mine.map(|m| self.others_last_heard().map(|o| o.map_or(m, |o| m.max(o)))).transpose()?;
        self.heard(t)?;
        let stalled = served_until.map_or(0.0, |s| t - s);
        if stalled > STALL_SECONDS {
            // Rows another writer holds are being served now: they need no
            // grace, and waiting for them could deadlock.
            let extended = self.conn.execute(
                &format!("UPDATE jobs SET lease_deadline = lease_deadline + ?1 WHERE id IN (SELECT id FROM jobs WHERE state = {RUNNING} FOR UPDATE SKIP LOCKED)"),
                args![stalled],
            )?;
            tracing::warn!(seconds = stalled, leases = extended, "the coordinator was behind; running leases get that time back");
            metrics::counter!("stylefarm_coordinator_stalls_total").increment(1);
        }
        let lapsed: Vec<(String, String, i64)> = {
            // Another coordinator's sweep (or a call it is applying) has
            // the rows it locked: this one takes the rest.
            let lapsed = format!("SELECT id, worker, fencing_token FROM jobs WHERE state = {RUNNING} AND lease_deadline < ?1 FOR UPDATE SKIP LOCKED");
            self.conn.query_map(&lapsed, args![now()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
        };
        let mut touched = Vec::new();
        for (job, worker, token) in lapsed {
            let call = Call { worker: &worker, job: &job, token: token as u64 };
            let message = "its worker stopped heartbeating (lease lapsed)";
            match self.worker_event(&call, Event::Lapse, rules, "lease lapsed", &[], |tx, _| {
                tx.execute("UPDATE jobs SET error = ?1 WHERE id = ?2", args![message, job])?;
                Ok(())
            }) {
                Ok(a) => touched.push(a.collection),
                Err(CallError::Db(e)) => return Err(e),
                Err(e) => tracing::warn!(job, "lapse not applied: {e}"),
            }
        }
        Ok(touched)
    }
}
