//! The coordinator's state in SQLite: collections, jobs, attempts, workers.
//! Every change is one transaction, so a coordinator killed at any moment
//! restarts with every accepted collection and job intact. What a worker's
//! call does to a job is decided by [`crate::machine::next`]; this module
//! checks who is calling, applies the step and records the attempt.

use sql::{args, Conn, Optional, Row};
pub use sql::Target;
use stylefarm_proto as pb;

use crate::machine::{self, Budget, Cause, Event, Refusal, State};

mod fleet;
pub mod ids;
mod notify;
pub mod copy;
mod schema;
pub mod sql;
pub mod testing;
pub use fleet::worker_state;
pub use notify::{Ended, Failure};


/// A job's parameters and style keys: its own columns for jobs created
/// before they were stored once per collection, else its variant's and
/// its column's rows.
const JOB_PARAMS: &str = "COALESCE(NULLIF(params_json, ''),
    (SELECT v.params_json FROM variants v WHERE v.collection_id = jobs.collection_id AND v.variant_index = jobs.variant_index))";
const JOB_STYLE_KEYS: &str = "COALESCE(NULLIF(style_key, ''),
    (SELECT c.style_keys FROM columns c WHERE c.collection_id = jobs.collection_id AND c.style_index = jobs.style_index))";

/// The PostgreSQL channel job changes are announced on.
const CHANGES_CHANNEL: &str = "stylefarm_jobs";
/// Most bytes of job ids in one notification (the server takes 8000).
const NOTIFY_PAYLOAD: usize = 7000;

/// A sweep that starts this long after the one before found the
/// coordinator itself behind (its runtime or its state's thread stalled):
/// running leases get that time back.
const STALL_SECONDS: f64 = 2.0;

/// The farm at a glance (the dashboard's farm page).
#[derive(Debug, Clone, Default)]
pub struct FarmSummary {
    /// Attempts that succeeded in the last hour.
    pub done_last_hour: u64,
    /// Attempts that ended badly in the last day, by cause, most first.
    pub failures_last_day: Vec<(String, u64)>,
    /// Iterations per second of each worker's running job, by worker id.
    pub iterations_per_second: Vec<(String, f64)>,
}

pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The rules the database applies, from the coordinator's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub lease_seconds: f64,
    /// Own failures before a job is given up.
    pub max_failures: u32,
    /// Requeues through no fault of the job before it is given up.
    pub max_requeues: u32,
    /// Failed attempts in a row before a worker gets no more jobs.
    pub quarantine_after: u32,
}

/// Why a worker's call was refused.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no job {0}")]
    NoJob(String),
    #[error("worker {0} is not registered; register first")]
    NotRegistered(String),
    #[error("worker {worker} is {how}; a worker that restarts registers again")]
    Gone { worker: String, how: String },
    /// An operator's action that the worker's state does not allow.
    #[error("worker {worker}: {why}")]
    Busy { worker: String, why: String },
    #[error("worker {worker} is quarantined after {strikes} failed attempts in a row; fix its device or storage and restart it")]
    Quarantined { worker: String, strikes: u32 },
    #[error("job {job}'s lease is held by another worker")]
    WrongWorker { job: String },
    #[error("stale lease: job {job} has no current lease under this fencing token{why}")]
    Stale { job: String, why: String },
    #[error("job {job}: {refusal}")]
    Refused { job: String, refusal: Refusal },
    /// What the worker reported cannot be true of the job.
    #[error("job {job}: {what}")]
    Invalid { job: String, what: String },
    #[error("database: {0}")]
    Db(#[from] sql::Error),
}

/// The next job to lease: the queue's order (priority, then collection,
/// then job, all on the row) walked along the partial index `jobs_queue`,
/// skipping jobs in their retry backoff or needing more memory than the
/// worker has. Its cost does not grow with the queue.
fn lease_query() -> &'static str {
    static QUERY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    QUERY.get_or_init(|| {
        format!(
            "SELECT id, collection_id, content_key, {JOB_STYLE_KEYS}, {JOB_PARAMS}, width, height,
                    checkpoint_every, snapshot_every, resume_key, resume_iteration, attempts, state
             FROM jobs INDEXED BY jobs_queue
             WHERE state = 1 AND not_before <= ?1 AND (CAST(?2 AS BIGINT) = 0 OR min_memory <= ?2)
             ORDER BY prio, cseq, seq LIMIT 1 FOR UPDATE SKIP LOCKED"
        )
    })
}

/// A running job's spec again, for a worker that asks to lease while it
/// holds it (its reply was lost): the same columns as [`lease_query`].
fn held_query() -> &'static str {
    static QUERY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    QUERY.get_or_init(|| {
        format!(
            "SELECT id, collection_id, content_key, {JOB_STYLE_KEYS}, {JOB_PARAMS}, width, height,
                    checkpoint_every, snapshot_every, resume_key, resume_iteration, attempts, state, fencing_token
             FROM jobs INDEXED BY jobs_held WHERE worker = ?1 AND state = 2 LIMIT 1"
        )
    })
}

/// Joins a blended job's style keys in the `style_key` column (keys are
/// `inputs/<sha256>`, so they never contain it).
const STYLE_KEY_SEPARATOR: &str = "\n";

/// A job as the database holds it, for creating rows.
#[derive(Clone)]
pub struct NewJob {
    pub id: String,
    pub content_index: u32,
    pub style_index: u32,
    pub variant_index: u32,
    pub content_name: String,
    pub style_name: String,
    pub content_key: String,
    /// The styles the job reads: one, or every style of a blended collection.
    pub style_keys: Vec<String>,
    pub params_json: String,
    pub width: u32,
    pub height: u32,
    pub iterations: u32,
    pub checkpoint_every: u32,
    pub snapshot_every: u32,
    /// Estimated peak memory: only workers with at least this much (or
    /// that did not say) lease it.
    pub min_memory: u64,
}

/// A new collection, with who submitted it.
pub struct NewCollection {
    pub id: String,
    pub owner: String,
    /// Empty: no deduplication.
    pub idempotency_key: String,
    pub name: String,
    pub priority: i32,
    /// Contents × styles × variants.
    pub shape: (u32, u32, u32),
    pub jobs: Vec<NewJob>,
    /// Where to announce its end ("": nowhere).
    pub notify_url: String,
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
    /// The call repeated one that had already been applied: nothing changed.
    pub repeated: bool,
}

pub struct Db {
    conn: Conn,
    /// Jobs changed since the last [`Db::take_touched`]: what the state's
    /// owner announces to watchers after a commit.
    touched: Vec<String>,
    /// When [`Db::expire_leases`] last ran (in memory: a restart grants
    /// its own grace).
    last_sweep: Option<f64>,
}

fn state_of(v: i32) -> sql::Result<State> {
    State::from_wire(v).ok_or_else(|| sql::Error::Type(format!("no job state {v}")))
}

const QUEUED: i32 = pb::JobState::Queued as i32;
const RUNNING: i32 = pb::JobState::Running as i32;
const FAILED: i32 = pb::JobState::Failed as i32;

fn job_from_row(r: &Row) -> sql::Result<pb::Job> {
    Ok(pb::Job {
        job_id: r.get("id")?,
        collection_id: r.get("collection_id")?,
        content_index: r.get("content_index")?,
        style_index: r.get("style_index")?,
        variant_index: r.get("variant_index")?,
        content_name: r.get("content_name")?,
        style_name: r.get("style_name")?,
        state: r.get("state")?,
        attempts: r.get("attempts")?,
        progress: Some(pb::Progress {
            iteration: r.get("iteration")?,
            iterations: r.get("iterations")?,
            content: r.get("content")?,
            style: r.get("style")?,
            tv: r.get("tv")?,
            total: r.get("total")?,
            eta_seconds: r.get("eta")?,
        }),
        worker: r.get("worker")?,
        error: r.get("error")?,
        output_key: r.get("output_key")?,
        started_from: r.get("started_from")?,
        failures: r.get("failures")?,
        requeues: r.get("requeues")?,
    })
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
        Event::Lease | Event::Retry => "",
    }
}

/// How many of `jobs` are in each state.
fn count(jobs: &[pb::Job]) -> pb::JobCounts {
    let mut counts = pb::JobCounts::default();
    for j in jobs {
        add(&mut counts, j.state, 1);
    }
    counts
}

/// Adds `n` jobs in wire state `state` to `counts`.
fn add(counts: &mut pb::JobCounts, state: i32, n: u32) {
    let slot = match State::from_wire(state) {
        Some(State::Queued) => &mut counts.queued,
        Some(State::Running) => &mut counts.running,
        Some(State::Succeeded) => &mut counts.succeeded,
        Some(State::Failed) => &mut counts.failed,
        Some(State::Cancelled) => &mut counts.cancelled,
        None => return,
    };
    *slot += n;
}

impl Db {
    /// Opens (creating if needed) the database and runs pending migrations.
    pub fn open(path: &std::path::Path) -> sql::Result<Self> {
        Self::connect(&Target::Sqlite(path.to_path_buf()))
    }

    /// Connects to the database `target` names (creating an SQLite file if
    /// needed) and runs pending migrations.
    pub fn connect(target: &Target) -> sql::Result<Self> {
        let conn = match target {
            Target::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path)?;
                conn.pragma_update(None, "journal_mode", "WAL")?;
                conn.pragma_update(None, "synchronous", "FULL")?;
                conn.pragma_update(None, "foreign_keys", "ON")?;
                Conn::sqlite(conn)
            }
            Target::Postgres(url) => Conn::postgres(url)?,
        };
        schema::migrate(&conn)?;
        Ok(Self { conn, touched: Vec::new(), last_sweep: None })
    }

    /// A connection for reads: for SQLite a read-only one, which sees
    /// every committed change and never blocks the writer (WAL).
    pub fn open_reader(target: &Target) -> sql::Result<Self> {
        let conn = match target {
            Target::Sqlite(path) => Conn::sqlite(rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?),
            Target::Postgres(url) => Conn::postgres(url)?,
        };
        Ok(Self { conn, touched: Vec::new(), last_sweep: None })
    }

    /// Whether this is PostgreSQL (where other coordinators may write too).
    pub fn is_shared(&self) -> bool {
        self.conn.is_postgres()
    }

    /// Opens one transaction that the next calls share until
    /// [`Db::commit`] (group commit: one fsync for all of them). Each call
    /// still runs in its own savepoint, so one that fails undoes only
    /// itself.
    pub fn begin(&mut self) -> sql::Result<()> {
        self.conn.begin()
    }

    /// Commits what [`Db::begin`] opened (on disk when this returns:
    /// SQLite's synchronous=FULL, PostgreSQL's synchronous_commit).
    pub fn commit(&mut self) -> sql::Result<()> {
        self.conn.commit()
    }

    /// Undoes what [`Db::begin`] opened, after a failed commit.
    pub fn rollback(&mut self) {
        self.conn.rollback();
        self.touched.clear();
    }

    /// The jobs changed since the last call, each once.
    pub fn take_touched(&mut self) -> Vec<String> {
        let mut ids = std::mem::take(&mut self.touched);
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// On PostgreSQL, announces the jobs changed since the last call to
    /// every coordinator, inside the open transaction: `NOTIFY` is
    /// delivered at commit, in commit order, and not at all if the
    /// transaction rolls back. Payloads are job ids joined by commas,
    /// under the server's 8000-byte limit.
    pub fn notify_touched(&mut self) -> sql::Result<()> {
        let ids = self.take_touched();
        let mut payload = String::new();
        for id in ids.iter().map(String::as_str).chain([""]) {
            if (id.is_empty() && !payload.is_empty()) || payload.len() + id.len() + 1 > NOTIFY_PAYLOAD {
                self.conn.query_row("SELECT pg_notify(?1, ?2)::text", args![CHANGES_CHANNEL, payload], |_| Ok(()))?;
                payload.clear();
            }
            if !id.is_empty() {
                if !payload.is_empty() {
                    payload.push(',');
                }
                payload.push_str(id);
            }
        }
        Ok(())
    }

    /// LISTENs for other coordinators' changes ([`Db::notify_touched`]).
    pub fn listen_for_changes(&self) -> sql::Result<()> {
        self.conn.listen(CHANGES_CHANNEL)
    }

    /// The ids of jobs changed by commits announced within `wait`.
    pub fn changed_jobs(&self, wait: std::time::Duration) -> sql::Result<Vec<String>> {
        let payloads = self.conn.notifications(wait)?;
        Ok(payloads.iter().flat_map(|p| p.split(',')).filter(|id| !id.is_empty()).map(str::to_string).collect())
    }

    /// A connection the database closed (PostgreSQL): open a new one.
    pub fn is_broken(&self) -> bool {
        self.conn.is_closed()
    }

    /// The rows of these jobs, for watchers.
    pub fn jobs_by_id(&self, ids: &[String]) -> sql::Result<Vec<pb::Job>> {
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(j) = self.conn.query_row("SELECT * FROM jobs WHERE id = ?1", args![id], job_from_row).optional()? {
                jobs.push(j);
            }
        }
        Ok(jobs)
    }

    /// The next value of a counter (`seq`, `fencing_token`): a row in
    /// SQLite (one writer), a sequence in PostgreSQL (no lock between
    /// coordinators).
    fn next(tx: &Conn, counter: &str) -> sql::Result<u64> {
        if tx.is_postgres() {
            return tx.query_row(&format!("SELECT nextval('{counter}')"), args![], |r| r.get(0));
        }
        tx.execute("UPDATE counters SET value = value + 1 WHERE name = ?1", args![counter])?;
        tx.query_row("SELECT value FROM counters WHERE name = ?1", args![counter], |r| r.get(0))
    }

    /// The coordinator just started: running leases get a full lease
    /// length from now, so time it was down costs no job anything.
    pub fn grant_grace(&mut self, rules: &Rules) -> sql::Result<usize> {
        // Rows another coordinator holds are skipped: it is alive and
        // serving those leases (waiting on its locks, in no set order,
        // deadlocked against it and stalled both for PostgreSQL's
        // deadlock_timeout, a second).
        self.conn.execute(
            "UPDATE jobs SET lease_deadline = GREATEST(lease_deadline, ?1) WHERE id IN (SELECT id FROM jobs WHERE state = ?2 FOR UPDATE SKIP LOCKED)",
            args![now() + rules.lease_seconds, RUNNING],
        )
    }

    /// The collection an earlier submit with this idempotency key created,
    /// and its job count.
    pub fn submitted(&self, owner: &str, idempotency_key: &str) -> sql::Result<Option<(String, u32)>> {
        if idempotency_key.is_empty() {
            return Ok(None);
        }
        self.conn
            .query_row(
                "SELECT c.id, (SELECT COUNT(*) FROM jobs j WHERE j.collection_id = c.id) FROM collections c WHERE owner = ?1 AND idempotency_key = ?2",
                args![owner, idempotency_key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
    }

    /// Creates a collection and all its jobs in one transaction; returns
    /// its id and job count, or those of the collection an earlier submit
    /// with the same idempotency key created.
    pub fn create_collection(&mut self, c: &NewCollection) -> sql::Result<(String, u32)> {
        if let Some(existing) = self.submitted(&c.owner, &c.idempotency_key)? {
            return Ok(existing);
        }
        let tx = self.conn.savepoint()?;
        let seq = Self::next(&tx, "seq")?;
        let collection_seq = seq as i64;
        tx.execute(
            "INSERT INTO collections (id, name, priority, created, contents, styles, variants, seq, owner, idempotency_key, notify_url)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            args![c.id, c.name, c.priority, now(), c.shape.0, c.shape.1, c.shape.2, seq, c.owner, c.idempotency_key, c.notify_url],
        )?;
        // Every job of a variant has its parameters, every job of a column
        // its style keys: stored once here (from the first job of each),
        // read by the job's indexes.
        let (mut variants, mut columns) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
        for j in &c.jobs {
            if variants.insert(j.variant_index) {
                tx.execute(
                    "INSERT INTO variants (collection_id, variant_index, params_json) VALUES (?1, ?2, ?3)",
                    args![c.id, j.variant_index, j.params_json],
                )?;
            }
            if columns.insert(j.style_index) {
                tx.execute(
                    "INSERT INTO columns (collection_id, style_index, style_keys) VALUES (?1, ?2, ?3)",
                    args![c.id, j.style_index, j.style_keys.join(STYLE_KEY_SEPARATOR)],
                )?;
            }
        }
        for j in &c.jobs {
            let seq = Self::next(&tx, "seq")?;
            tx.execute(
                "INSERT INTO jobs (id, collection_id, seq, content_index, style_index, variant_index, content_name, style_name,
                   content_key, style_key, params_json, width, height, checkpoint_every, snapshot_every, state, iterations, min_memory,
                   prio, cseq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
                args![
                    j.id, c.id, seq, j.content_index, j.style_index, j.variant_index, j.content_name, j.style_name, j.content_key,
                    "", "", j.width, j.height, j.checkpoint_every, j.snapshot_every, QUEUED,
                    j.iterations, j.min_memory as i64, -(c.priority as i64), collection_seq
                ],
            )?;
        }
        tx.commit()?;
        Ok((c.id.clone(), c.jobs.len() as u32))
    }

    /// A collection with every job, and its owner.
    pub fn collection(&self, id: &str) -> sql::Result<Option<(String, pb::Collection)>> {
        let Some((owner, mut c)) = self.collection_header(id)? else { return Ok(None) };
        c.jobs = self.conn.query_map("SELECT * FROM jobs WHERE collection_id = ?1 ORDER BY seq", args![id], job_from_row)?;
        c.counts = Some(count(&c.jobs));
        c.columns = self.grid_columns(id)?;
        Ok(Some((owner, c)))
    }

    /// A collection without its jobs (counts unset), and its owner.
    pub fn collection_header(&self, id: &str) -> sql::Result<Option<(String, pb::Collection)>> {
        self
            .conn
            .query_row("SELECT * FROM collections WHERE id = ?1", args![id], |r| {
                Ok((
                    r.get::<_, String>("owner")?,
                    pb::Collection {
                        collection_id: r.get("id")?,
                        name: r.get("name")?,
                        priority: r.get("priority")?,
                        jobs: Vec::new(),
                        contents: r.get("contents")?,
                        styles: r.get("styles")?,
                        variants: r.get("variants")?,
                        created_unix: r.get("created")?,
                        counts: None,
                        columns: Vec::new(),
                    },
                ))
            })
            .optional()
    }

    /// The jobs of rows (contents) `first..first + rows` of a collection,
    /// in submission order: one screen of the dashboard's grid.
    pub fn grid_rows(&self, collection: &str, first: u32, rows: u32) -> sql::Result<Vec<pb::Job>> {
        self.conn.query_map(
            "SELECT * FROM jobs WHERE collection_id = ?1 AND content_index >= ?2 AND content_index < ?3 ORDER BY seq",
            args![collection, first, first.saturating_add(rows)],
            job_from_row,
        )
    }

    /// The collection's columns, one per style × variant: each style's name
    /// and each variant's parameters (JSON), read from its first row.
    pub fn grid_columns(&self, collection: &str) -> sql::Result<Vec<pb::Column>> {
        self.conn.query_map(
            &format!("SELECT style_index, variant_index, style_name, {JOB_PARAMS} FROM jobs WHERE collection_id = ?1 AND content_index = 0 ORDER BY seq"),
            args![collection],
            |r| Ok(pb::Column { style_index: r.get(0)?, variant_index: r.get(1)?, style_name: r.get(2)?, params_json: r.get(3)? }),
        )
    }

    /// What the dashboard's farm page shows beside the workers.
    pub fn farm_summary(&self) -> sql::Result<FarmSummary> {
        let now = now();
        let done_last_hour = self.conn.query_row(
            "SELECT COUNT(*) FROM attempts WHERE ended >= ?1 AND outcome = 'succeeded'",
            args![now - 3600.0],
            |r| r.get::<_, i64>(0),
        )? as u64;
        // "failed (KIND): message" counts under "failed (KIND)"; the other
        // outcomes are their own cause.
        let failures = self.conn.query_map(
            "SELECT CASE WHEN outcome LIKE 'failed (%' THEN substr(outcome, 1, instr(outcome, ')')) ELSE outcome END AS cause, COUNT(*)
             FROM attempts WHERE ended >= ?1 AND outcome NOT IN ('succeeded', 'released', 'cancelled')
             GROUP BY cause ORDER BY COUNT(*) DESC",
            args![now - 86_400.0],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)),
        )?;
        // Each running job's pace: iterations since its attempt began over
        // the time since (loading included).
        let pace = self.conn.query_map(
            "SELECT j.worker, (j.iteration - j.started_from) / GREATEST(?1 - a.started, 1e-3)
             FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempts WHERE j.state = ?2",
            args![now, RUNNING],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?.max(0.0))),
        )?;
        Ok(FarmSummary { done_last_hour, failures_last_day: failures, iterations_per_second: pace })
    }

    /// Ids of the collections `owner` submitted (every one: `None`), oldest
    /// first. The service pages with [`Db::collections_page`]; tests list.
    #[cfg(test)]
    pub fn collection_ids(&self, owner: Option<&str>) -> sql::Result<Vec<String>> {
        self.conn.query_map("SELECT id FROM collections WHERE CAST(?1 AS TEXT) IS NULL OR owner = ?1 ORDER BY seq", args![owner], |r| r.get(0))
    }

    /// One job, its attempts and its collection's owner.
    pub fn job(&self, id: &str) -> sql::Result<Option<(String, pb::JobDetail)>> {
        let job = self
            .conn
            .query_row("SELECT j.*, c.owner AS owner FROM jobs j JOIN collections c ON c.id = j.collection_id WHERE j.id = ?1", args![id], |r| {
                Ok((r.get::<_, String>("owner")?, job_from_row(r)?))
            })
            .optional()?;
        let Some((owner, job)) = job else { return Ok(None) };
        let attempts = self.conn.query_map(
            "SELECT attempt, worker, started, ended, outcome, resumed_from FROM attempts WHERE job_id = ?1 ORDER BY attempt",
            args![id],
            |r| {
                Ok(pb::Attempt {
                    attempt: r.get(0)?,
                    worker: r.get(1)?,
                    started_unix: r.get(2)?,
                    ended_unix: r.get::<_, Option<f64>>(3)?.unwrap_or(0.0),
                    outcome: r.get::<_, Option<String>>(4)?.unwrap_or_else(|| "running".into()),
                    resumed_from: r.get(5)?,
                })
            },
        )?;
        let params_json = self.job_params(id)?.unwrap_or_default();
        Ok(Some((owner, pb::JobDetail { job: Some(job), attempts, params_json })))
    }

    /// Leases the oldest queued job of the highest-priority collection
    /// that fits the worker's memory, under a fresh fencing token: a
    /// counter in the high half (so tokens only grow) and 32 random bits
    /// in the low half (so none can be guessed).
    pub fn lease(&mut self, worker: &str, rules: &Rules) -> Result<Option<Leased>, CallError> {
        let tx = self.conn.savepoint()?;
        let t = now();
        let w: Option<(i64, bool, u32, bool, String, bool)> = tx
            .query_row(
                "SELECT memory_bytes, quarantined, strikes, EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_held WHERE worker = ?1 AND state = 2),
                        ended, draining
                 FROM workers WHERE id = ?1 FOR UPDATE",
                args![worker],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()?;
        let (memory, quarantined, strikes, holds, ended, draining) =
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
        let row = tx
            .query_row(
                lease_query(),
                args![t, memory],
                |r| {
                    Ok((
                        spec_of(r)?,
                        r.get::<_, u32>(10)?,
                        r.get::<_, u32>(11)?,
                        state_of(r.get(12)?)?,
                    ))
                },
            )
            .optional()?;
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
            "UPDATE jobs SET state = ?1, attempts = ?2, worker = ?3, fencing_token = ?4, lease_deadline = ?5, started_from = ?6, error = ''
             WHERE id = ?7",
            args![step.to.to_wire() as i32, attempt, worker, token as i64, t + rules.lease_seconds, resume_iteration, spec.job_id],
        )?;
        tx.execute(
            "INSERT INTO attempts (job_id, attempt, worker, fencing_token, started, resumed_from) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            args![spec.job_id, attempt, worker, token as i64, t, resume_iteration],
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
    fn worker_event(
        &mut self,
        call: &Call,
        event: Event,
        rules: &Rules,
        outcome: &str,
        reported: &[(&str, u32)],
        apply: impl FnOnce(&Conn, State) -> sql::Result<()>,
    ) -> Result<Answer, CallError> {
        let tx = self.conn.savepoint()?;
        let job: Option<(i32, i64, String, u32, u32, u32)> = tx
            .query_row("SELECT state, fencing_token, collection_id, failures, requeues, iterations FROM jobs WHERE id = ?1 FOR UPDATE", args![call.job], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })
            .optional()?;
        let (state, current, collection, failures, requeues, total) = job.ok_or_else(|| CallError::NoJob(call.job.to_string()))?;
        let state = state_of(state)?;
        let attempt: Option<(String, Option<String>)> = tx
            .query_row("SELECT worker, outcome FROM attempts WHERE job_id = ?1 AND fencing_token = ?2", args![call.job, call.token as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((holder, ended)) = attempt else {
            return Err(CallError::Stale { job: call.job.to_string(), why: String::new() });
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
                return Ok(Answer { collection, cancelled, repeated: true });
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
            let outcome = if cancelled { "cancelled" } else { outcome };
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
        Ok(Answer { collection, cancelled, repeated: false })
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
    /// leases get it back before anything is expired.
    pub fn expire_leases(&mut self, rules: &Rules) -> sql::Result<Vec<String>> {
        let t = now();
        let stalled = self.last_sweep.map_or(0.0, |last| t - last);
        self.last_sweep = Some(t);
        if stalled > STALL_SECONDS {
            let extended = self.conn.execute("UPDATE jobs SET lease_deadline = lease_deadline + ?1 WHERE state = ?2", args![stalled, RUNNING])?;
            tracing::warn!(seconds = stalled, leases = extended, "the coordinator was behind; running leases get that time back");
            metrics::counter!("stylefarm_coordinator_stalls_total").increment(1);
        }
        let lapsed: Vec<(String, String, i64)> = {
            // Another coordinator's sweep (or a call it is applying) has
            // the rows it locked: this one takes the rest.
            self.conn.query_map("SELECT id, worker, fencing_token FROM jobs WHERE state = 2 AND lease_deadline < ?1 FOR UPDATE SKIP LOCKED", args![now()], |r| {
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

    /// `(state name, jobs)` for every state.
    pub fn counts(&self) -> sql::Result<Vec<(&'static str, i64)>> {
        let mut n = [0i64; 6];
        for (state, count) in self.conn.query_map("SELECT state, COUNT(*) FROM jobs GROUP BY state", args![], |r| Ok((r.get::<_, usize>(0)?, r.get::<_, i64>(1)?)))? {
            if let Some(slot) = n.get_mut(state) {
                *slot = count;
            }
        }
        Ok(State::ALL.iter().map(|s| (s.name(), n[s.to_wire() as usize])).collect())
    }

    /// How many of a collection's jobs are in each state.
    pub fn job_counts(&self, collection: &str) -> sql::Result<pb::JobCounts> {
        let mut counts = pb::JobCounts::default();
        let rows = self.conn.query_map("SELECT state, COUNT(*) FROM jobs WHERE collection_id = ?1 GROUP BY state", args![collection], |r| {
            Ok((r.get::<_, i32>(0)?, r.get::<_, u32>(1)?))
        })?;
        for (state, n) in rows {
            add(&mut counts, state, n);
        }
        Ok(counts)
    }

    /// One page of the collections `owner` may see (every one: `None`),
    /// oldest first, without their jobs but with their counts: those after
    /// sequence number `after`. Returns the page and the last one's
    /// sequence number when more may follow.
    pub fn collections_page(&self, owner: Option<&str>, after: i64, limit: u32) -> sql::Result<(Vec<pb::Collection>, Option<i64>)> {
        let rows: Vec<(pb::Collection, i64)> = self.conn.query_map(
            "SELECT id, name, priority, created, contents, styles, variants, seq FROM collections
             WHERE (CAST(?1 AS TEXT) IS NULL OR owner = ?1) AND seq > ?2 ORDER BY seq LIMIT ?3",
            args![owner, after, limit],
            |r| {
                Ok((
                    pb::Collection {
                        collection_id: r.get(0)?,
                        name: r.get(1)?,
                        priority: r.get(2)?,
                        created_unix: r.get(3)?,
                        contents: r.get(4)?,
                        styles: r.get(5)?,
                        variants: r.get(6)?,
                        ..Default::default()
                    },
                    r.get(7)?,
                ))
            },
        )?;
        let next = (rows.len() as u32 == limit).then(|| rows.last().map(|(_, seq)| *seq)).flatten();
        let mut page = Vec::with_capacity(rows.len());
        for (mut c, _) in rows {
            c.counts = Some(self.job_counts(&c.collection_id)?);
            page.push(c);
        }
        Ok((page, next))
    }

    /// One page of a collection's jobs in submission order: those after
    /// sequence number `after`; and the last one's when more may follow.
    pub fn jobs_page(&self, collection: &str, after: i64, limit: u32) -> sql::Result<(Vec<pb::Job>, Option<i64>)> {
        let rows: Vec<(pb::Job, i64)> = self.conn.query_map(
            "SELECT *, seq AS page_seq FROM jobs WHERE collection_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            args![collection, after, limit],
            |r| Ok((job_from_row(r)?, r.get("page_seq")?)),
        )?;
        let next = (rows.len() as u32 == limit).then(|| rows.last().map(|(_, seq)| *seq)).flatten();
        Ok((rows.into_iter().map(|(j, _)| j).collect(), next))
    }

    /// The owner of a collection, if it exists.
    pub fn owner(&self, collection: &str) -> sql::Result<Option<String>> {
        self.conn.query_row("SELECT owner FROM collections WHERE id = ?1", args![collection], |r| r.get(0)).optional()
    }

    /// Where a job's attempts are: its collection, the collection's owner
    /// and the number of attempts so far (0: none yet). Folders are
    /// [`crate::paths::attempt`]`(collection, job, n)` for n in 1..=attempts.
    pub fn latest_attempt(&self, job: &str) -> sql::Result<Option<(String, String, u32)>> {
        self.conn
            .query_row(
                "SELECT j.collection_id, c.owner, j.attempts FROM jobs j JOIN collections c ON c.id = j.collection_id WHERE j.id = ?1",
                args![job],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, u32>(2)?)),
            )
            .optional()
    }

    /// Cancels every job of a collection that the state machine lets go
    /// (queued and running ones; ended ones keep their state).
    pub fn cancel(&mut self, collection: &str) -> sql::Result<usize> {
        let tx = self.conn.savepoint()?;
        let ids: Vec<(String, i32)> = {
            tx.query_map("SELECT id, state FROM jobs WHERE collection_id = ?1 FOR UPDATE", args![collection], |r| Ok((r.get(0)?, r.get(1)?)))?
        };
        let budget = Budget { failures: 0, max_failures: 1, requeues: 0, max_requeues: 0 };
        let mut n = 0;
        for (id, state) in ids {
            if let Ok(step) = machine::next(state_of(state)?, Event::Cancel, budget) {
                tx.execute("UPDATE jobs SET state = ?1, error = 'cancelled' WHERE id = ?2", args![step.to.to_wire() as i32, id])?;
                self.touched.push(id);
                n += 1;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// A person acts on one job: `Event::Cancel` (queued or running → cancelled)
    /// or `Event::Retry` (failed → queued, its budgets and error cleared).
    /// Returns the job's collection, or the machine's refusal.
    /// Retries every failed job of a collection; how many.
    pub fn retry_failed(&mut self, collection: &str) -> Result<usize, CallError> {
        let failed: Vec<String> = {
            self.conn.query_map(
                "SELECT id FROM jobs INDEXED BY jobs_by_collection_state WHERE collection_id = ?1 AND state = ?2",
                args![collection, pb::JobState::Failed as i32],
                |r| r.get(0),
            )?
        };
        for job in &failed {
            self.act_on_job(job, Event::Retry, None)?;
        }
        Ok(failed.len())
    }

    /// A job's parameters (JSON, every key present): its own if it has
    /// them, else its variant's.
    pub fn job_params(&self, job: &str) -> sql::Result<Option<String>> {
        self.conn.query_row(&format!("SELECT {JOB_PARAMS} FROM jobs WHERE id = ?1"), args![job], |r| r.get(0)).optional()
    }

    /// A person's Cancel or Retry of one job; a retry with `changed`
    /// parameters also starts it from the init (a checkpoint of the old
    /// parameters is no start for the new ones). A retry re-arms the
    /// collection's notification. Returns the job's collection.
    pub fn act_on_job(
        &mut self,
        job: &str,
        event: Event,
        changed: Option<&NewParams>,
    ) -> Result<String, CallError> {
        let tx = self.conn.savepoint()?;
        let row: Option<(i32, String)> =
            tx.query_row("SELECT state, collection_id FROM jobs WHERE id = ?1", args![job], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        let (state, collection) = row.ok_or_else(|| CallError::NoJob(job.to_string()))?;
        let budget = Budget { failures: 0, max_failures: 1, requeues: 0, max_requeues: 0 };
        let step = machine::next(state_of(state)?, event, budget).map_err(|refusal| CallError::Refused { job: job.to_string(), refusal })?;
        match event {
            Event::Retry => {
                tx.execute(
                    "UPDATE jobs SET state = ?1, failures = 0, requeues = 0, not_before = 0, error = '' WHERE id = ?2",
                    args![step.to.to_wire() as i32, job],
                )?;
                if let Some(p) = changed {
                    tx.execute(
                        "UPDATE jobs SET params_json = ?1, iterations = ?2, min_memory = ?3, resume_key = '', resume_iteration = 0,
                                         iteration = 0, content = 0, style = 0, tv = 0, total = 0, eta = 0
                         WHERE id = ?4",
                        args![p.params_json, p.iterations, i64::try_from(p.min_memory).unwrap_or(i64::MAX), job],
                    )?;
                }
                tx.execute(
                    "UPDATE collections SET notified = 0 WHERE id = ?1 AND notify_url != ''",
                    args![&collection],
                )?;
            }
            _ => {
                tx.execute(
                    "UPDATE jobs SET state = ?1, error = 'cancelled' WHERE id = ?2",
                    args![step.to.to_wire() as i32, job],
                )?;
            }
        };
        tx.commit()?;
        self.touched.push(job.to_string());
        Ok(collection)
    }

    /// What a retry with changes needs of a job: its parameters (every
    /// key), how many styles it blends, and its size.
    pub fn job_for_retry(&self, job: &str) -> sql::Result<Option<(String, usize, u32, u32)>> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {JOB_PARAMS}, {JOB_STYLE_KEYS}, width, height FROM jobs WHERE id = ?1"
                ),
                args![job],
                |r| {
                    let keys: String = r.get(1)?;
                    Ok((
                        r.get(0)?,
                        keys.split(STYLE_KEY_SEPARATOR).count(),
                        r.get(2)?,
                        r.get(3)?,
                    ))
                },
            )
            .optional()
    }
}

/// A job's parameters after a retry with changes.
#[derive(Debug, Clone)]
pub struct NewParams {
    /// Every key, as a worker receives them.
    pub params_json: String,
    pub iterations: u32,
    /// Estimated peak memory at the job's size.
    pub min_memory: u64,
}

/// Seconds before retry number `failures`: 1, 2, 4, … capped at 30.
pub fn backoff(failures: u32) -> f64 {
    (2f64.powi(failures.saturating_sub(1) as i32)).min(30.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules { lease_seconds: 60.0, max_failures: 3, max_requeues: 10, quarantine_after: 3 };

    pub(super) fn job(id: &str) -> NewJob {
        NewJob {
            id: id.into(),
            content_index: 0,
            style_index: 0,
            variant_index: 0,
            content_name: "c".into(),
            style_name: "s".into(),
            content_key: "inputs/c".into(),
            style_keys: vec!["inputs/s".into()],
            params_json: "{}".into(),
            width: 8,
            height: 8,
            iterations: 10,
            checkpoint_every: 5,
            snapshot_every: 0,
            min_memory: 0,
        }
    }

    fn create(db: &mut Db, id: &str, priority: i32, jobs: &[NewJob]) {
        let c = NewCollection {
            id: id.into(),
            owner: String::new(),
            idempotency_key: String::new(),
            name: id.into(),
            priority,
            shape: (jobs.len() as u32, 1, 1),
            jobs: jobs.to_vec(),
            notify_url: String::new(),
        };
        db.create_collection(&c).unwrap();
    }

    fn worker(db: &mut Db, id: &str, memory: u64) {
        db.register_worker(
            id,
            &pb::RegisterRequest {
                name: id.into(),
                device: "cpu".into(),
                memory_bytes: memory,
                ..Default::default()
            },
            &RULES,
        )
        .unwrap();
    }

    fn state(db: &Db, collection: &str, job: &str) -> pb::Job {
        db.collection(collection).unwrap().unwrap().1.jobs.into_iter().find(|j| j.job_id == job).unwrap()
    }

    fn open() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("farm.db")).unwrap();
        (dir, db)
    }

    /// Runs `test` on a fresh SQLite file, and on a fresh PostgreSQL
    /// database when `STYLEFARM_TEST_POSTGRES` names a server
    /// (`scripts/test.sh` starts one).
    fn each_backend(test: impl Fn(&Target)) {
        let dir = tempfile::tempdir().unwrap();
        test(&Target::Sqlite(dir.path().join("farm.db")));
        if let Some(pg) = super::testing::Postgres::from_env() {
            let database = pg.fresh_database();
            eprintln!("again on PostgreSQL ({})", database.describe());
            test(&database);
        }
    }

    #[test]
    fn ids_are_found_by_their_start_and_nothing_else() {
        each_backend(|target| {
            let mut db = Db::connect(target).unwrap();
            create(&mut db, "abcd0000-c", 0, &[job("abcd1111-j"), job("abce2222-j")]);
            let found = |p: &str| db.ids_starting(p, 20).unwrap().into_iter().map(|(k, id, _)| (k, id)).collect::<Vec<_>>();
            use ids::Kind::{Collection, Job};
            assert_eq!(found("abcd1"), vec![(Job, "abcd1111-j".to_string())]);
            assert_eq!(found("abcd"), vec![(Collection, "abcd0000-c".to_string()), (Job, "abcd1111-j".to_string())], "both kinds");
            assert_eq!(found("abc").len(), 3);
            assert!(found("abcf").is_empty() && found("bcd").is_empty(), "a start, not a part");
            assert_eq!(found("abce2222-j"), vec![(Job, "abce2222-j".to_string())], "a whole id is its own start");
        });
    }

    #[test]
    fn survives_reopen_and_fences_stale_leases() {
        each_backend(|target| {
        {
            let mut db = Db::connect(target).unwrap();
            create(&mut db, "c1", 0, &[job("j1")]);
        }
        let mut db = Db::connect(target).unwrap();
        assert_eq!(db.collection("c1").unwrap().unwrap().1.jobs.len(), 1, "nothing lost across a reopen");
        worker(&mut db, "w1", 0);
        worker(&mut db, "w2", 0);
        let lapsing = Rules { lease_seconds: -1.0, ..RULES };
        let first = db.lease("w1", &lapsing).unwrap().unwrap();
        assert_eq!((first.spec.job_id.as_str(), first.attempt), ("j1", 1));
        db.expire_leases(&RULES).unwrap();
        let j = state(&db, "c1", "j1");
        assert_eq!((j.state, j.failures, j.requeues), (QUEUED, 0, 1), "a lapse is requeued without spending the failure budget");
        let second = db.lease("w2", &RULES).unwrap().unwrap();
        assert!(second.token > first.token && second.attempt == 2);
        let stale = Call { worker: "w1", job: "j1", token: first.token };
        assert!(matches!(db.complete(&stale, "k", &Default::default(), &RULES), Err(CallError::Stale { .. })));
        let hb = pb::HeartbeatRequest::default();
        assert!(matches!(db.heartbeat(&stale, &hb, None, &RULES), Err(CallError::Stale { .. })));
        let thief = Call { worker: "w1", job: "j1", token: second.token };
        assert!(matches!(db.complete(&thief, "k", &Default::default(), &RULES), Err(CallError::WrongWorker { .. })), "another worker's lease");
        let good = Call { worker: "w2", job: "j1", token: second.token };
        assert!(!db.complete(&good, "k", &Default::default(), &RULES).unwrap().repeated);
        assert!(db.complete(&good, "k", &Default::default(), &RULES).unwrap().repeated, "a retried completion is answered OK");
        assert_eq!(state(&db, "c1", "j1").state, pb::JobState::Succeeded as i32);
        assert!(matches!(db.fail(&good, pb::FailureKind::Internal, "x", &RULES), Err(CallError::Stale { .. })), "a success is final");
        });
    }

    #[test]
    fn only_registered_unquarantined_workers_lease_and_tokens_are_not_a_sequence() {
        each_backend(|target| {
            let mut db = Db::connect(target).unwrap();
            create(&mut db, "c", 0, &[job("a"), job("b"), job("c"), job("d")]);
            assert!(matches!(db.lease("ghost", &RULES), Err(CallError::NotRegistered(_))));
            worker(&mut db, "w", 0);
            let l1 = db.lease("w", &RULES).unwrap().unwrap();
            let again = db.lease("w", &RULES).unwrap().unwrap();
            assert_eq!((&again.spec.job_id, again.token, again.attempt), (&l1.spec.job_id, l1.token, l1.attempt), "one lease at a time: the same again");
            assert_eq!(again.spec.prefix, l1.spec.prefix);
            worker(&mut db, "x", 0);
            let t1 = l1.token;
            let t2 = db.lease("x", &RULES).unwrap().unwrap().token;
            assert!(t2 > t1 && t2 - t1 != 1 && (t2 & 0xffff_ffff) != ((t1 + 1) & 0xffff_ffff), "{t1} then {t2}");
            db.fail(&Call { worker: "w", job: "a", token: t1 }, pb::FailureKind::Worker, "storage is read-only", &RULES).unwrap();
            for _ in 0..2 {
                let l = db.lease("w", &RULES).unwrap().unwrap();
                db.fail(&Call { worker: "w", job: &l.spec.job_id, token: l.token }, pb::FailureKind::Worker, "storage is read-only", &RULES).unwrap();
            }
            assert!(matches!(
                db.lease("w", &RULES),
                Err(CallError::Quarantined { strikes: 3, .. })
            ));
            let (listed, _) = db.workers_page(0, 10, false, RULES.lease_seconds).unwrap();
            let w = listed.iter().find(|w| w.worker_id == "w").unwrap();
            assert!(w.quarantined && w.strikes == 3);
            assert!(w.quarantine_reason.contains("its own failure (WORKER)"), "{}", w.quarantine_reason);
            let j = state(&db, "c", "a");
            assert_eq!((j.state, j.failures), (QUEUED, 0), "the worker's fault costs the job nothing");
            assert!(j.requeues >= 1);
        });
    }

    #[test]
    fn bad_input_is_not_retried_other_failures_are_capped_and_cancel_is_final() {
        each_backend(|target| {
            let mut db = Db::connect(target).unwrap();
            create(&mut db, "c", 0, &[job("a"), job("b")]);
            worker(&mut db, "w", 0);
            let l = db.lease("w", &RULES).unwrap().unwrap();
            db.fail(&Call { worker: "w", job: &l.spec.job_id, token: l.token }, pb::FailureKind::BadInput, "not an image", &RULES).unwrap();
            assert_eq!(state(&db, "c", &l.spec.job_id).state, pb::JobState::Failed as i32);
            let l = db.lease("w", &RULES).unwrap().unwrap();
            let two = Rules { max_failures: 2, ..RULES };
            db.fail(&Call { worker: "w", job: &l.spec.job_id, token: l.token }, pb::FailureKind::Internal, "boom", &two).unwrap();
            assert_eq!(state(&db, "c", &l.spec.job_id).state, QUEUED, "retried after an internal failure");
            assert!(db.lease("w", &RULES).unwrap().is_none(), "not before its backoff");
            // Cancel while running: the worker's later Fail leaves it cancelled.
            db.conn.execute("UPDATE jobs SET not_before = 0", args![]).unwrap();
            let l = db.lease("w", &RULES).unwrap().unwrap();
            db.cancel("c").unwrap();
            let call = Call { worker: "w", job: &l.spec.job_id, token: l.token };
            db.fail(&call, pb::FailureKind::Internal, "interrupted", &RULES).unwrap();
            assert_eq!(state(&db, "c", &l.spec.job_id).state, pb::JobState::Cancelled as i32, "a fail after cancel does not requeue");
            assert!(db.lease("w", &RULES).unwrap().is_none());
        });
    }

    #[test]
    fn out_of_memory_moves_the_job_to_a_larger_device() {
        each_backend(|target| {
            let mut db = Db::connect(target).unwrap();
            create(&mut db, "c", 0, &[job("a")]);
            worker(&mut db, "small", 1 << 30);
            worker(&mut db, "large", 8 << 30);
            let l = db.lease("small", &RULES).unwrap().unwrap();
            db.fail(&Call { worker: "small", job: "a", token: l.token }, pb::FailureKind::OutOfMemory, "CUDA_ERROR_OUT_OF_MEMORY", &RULES).unwrap();
            db.conn.execute("UPDATE jobs SET not_before = 0", args![]).unwrap();
            assert!(db.lease("small", &RULES).unwrap().is_none(), "not again on a device that ran out");
            assert_eq!(db.lease("large", &RULES).unwrap().unwrap().spec.job_id, "a");
        });
    }

    #[test]
    fn a_retried_submit_returns_the_first_collection() {
        each_backend(|target| {
            let mut db = Db::connect(target).unwrap();
            let c = |id: &str| NewCollection {
                id: id.into(),
                owner: "u1".into(),
                idempotency_key: "k1".into(),
                name: "n".into(),
                priority: 0,
                shape: (1, 1, 1),
                jobs: vec![job("a")],
                notify_url: String::new(),
            };
            assert_eq!(db.create_collection(&c("first")).unwrap(), ("first".to_string(), 1));
            assert_eq!(db.create_collection(&c("second")).unwrap(), ("first".to_string(), 1));
            assert_eq!(db.collection_ids(None).unwrap().len(), 1);
            let other = NewCollection { id: "third".into(), owner: "u2".into(), jobs: vec![job("b")], ..c("x") };
            assert_eq!(db.create_collection(&other).unwrap().0, "third", "keys are per user");
            assert_eq!(db.collection_ids(Some("u1")).unwrap(), ["first"]);
        });
    }

    #[test]
    fn lease_walks_an_index_and_never_sorts() {
        let (_d, db) = open();
        let plan: Vec<String> = db.conn.query_map(&format!("EXPLAIN QUERY PLAN {}", lease_query()), args![0.0, 0], |r| r.get::<_, String>(3)).unwrap();
        let plan = plan.join("; ");
        assert!(plan.contains("jobs_queue") && !plan.contains("TEMP B-TREE"), "{plan}");
        // The lease a worker already holds is found by its own index, not
        // a scan of every job.
        let plan: Vec<String> = db.conn.query_map(&format!("EXPLAIN QUERY PLAN {}", held_query()), args!["w"], |r| r.get::<_, String>(3)).unwrap();
        assert!(plan.join("; ").contains("jobs_held"), "{plan:?}");
    }

    #[test]
    fn pages_cover_every_item_once() {
        each_backend(|target| {
            let mut db = Db::connect(target).unwrap();
            let jobs: Vec<NewJob> = (0..25).map(|i| job(&format!("j{i:02}"))).collect();
            create(&mut db, "c", 0, &jobs);
            for i in 0..5 {
                create(&mut db, &format!("other{i}"), 0, &[job(&format!("o{i}"))]);
            }
            let (mut seen, mut after) = (Vec::new(), 0);
            loop {
                let (page, next) = db.jobs_page("c", after, 10).unwrap();
                seen.extend(page.into_iter().map(|j| j.job_id));
                match next {
                    Some(n) => after = n,
                    None => break,
                }
            }
            assert_eq!(seen, jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>());
            let (mut collections, mut after) = (Vec::new(), 0);
            loop {
                let (page, next) = db.collections_page(None, after, 4).unwrap();
                collections.extend(page.into_iter().map(|c| (c.collection_id, c.counts.unwrap().queued)));
                match next {
                    Some(n) => after = n,
                    None => break,
                }
            }
            assert_eq!(collections.len(), 6);
            assert_eq!(collections[0], ("c".to_string(), 25), "counts come with each collection");
        });
    }

    #[test]
    fn a_group_of_calls_commits_once_and_a_failing_one_undoes_only_itself() {
        each_backend(|target| {
        let mut db = Db::connect(target).unwrap();
        create(&mut db, "c", 0, &[job("a"), job("b")]);
        worker(&mut db, "w", 0);
        worker(&mut db, "x", 0);
        db.begin().unwrap();
        let first = db.lease("w", &RULES).unwrap().unwrap();
        assert!(matches!(db.lease("ghost", &RULES), Err(CallError::NotRegistered(_))));
        let second = db.lease("x", &RULES).unwrap().unwrap();
        // Not visible to a reader before the commit…
        let reader = Db::open_reader(target).unwrap();
        assert_eq!(reader.collection("c").unwrap().unwrap().1.counts.unwrap().running, 0);
        db.commit().unwrap();
        // … and all of it after.
        assert_eq!(reader.collection("c").unwrap().unwrap().1.counts.unwrap().running, 2);
        assert_ne!(first.spec.job_id, second.spec.job_id);
        assert_eq!(db.take_touched().len(), 2, "both leased jobs are announced");
        });
    }

    #[test]
    fn priority_first_then_fifo() {
        each_backend(|target| {
            let mut db = Db::connect(target).unwrap();
            create(&mut db, "low", 0, &[job("l1")]);
            create(&mut db, "high", 5, &[job("h1"), job("h2")]);
            let order: Vec<String> = (0..3)
                .map(|i| {
                    // One lease a worker: three workers take the queue's first three.
                    worker(&mut db, &format!("w{i}"), 0);
                    db.lease(&format!("w{i}"), &RULES).unwrap().unwrap().spec.job_id
                })
                .collect();
            assert_eq!(order, ["h1", "h2", "l1"]);
        });
    }

    #[test]
    fn a_restart_grants_running_leases_a_full_lease_length() {
        each_backend(|target| {
            let mut db = Db::connect(target).unwrap();
            create(&mut db, "c", 0, &[job("a")]);
            worker(&mut db, "w", 0);
            db.lease("w", &Rules { lease_seconds: -5.0, ..RULES }).unwrap().unwrap();
            db.grant_grace(&RULES).unwrap();
            assert!(db.expire_leases(&RULES).unwrap().is_empty(), "the downtime is not the worker's");
            assert_eq!(state(&db, "c", "a").state, RUNNING);
        });
    }

    /// Two coordinators on one PostgreSQL: the one that restarts must not
    /// wait on (or deadlock against) the rows the other holds mid-call.
    #[test]
    fn a_restart_grants_grace_around_the_rows_another_coordinator_holds() {
        let Some(pg) = super::testing::Postgres::from_env() else {
            eprintln!("skipped: STYLEFARM_TEST_POSTGRES is not set (scripts/test.sh sets it)");
            return;
        };
        let database = pg.fresh_database();
        let mut survivor = Db::connect(&database).unwrap();
        create(&mut survivor, "c", 0, &[job("a"), job("b")]);
        worker(&mut survivor, "w", 0);
        worker(&mut survivor, "v", 0);
        survivor.lease("w", &RULES).unwrap().unwrap();
        survivor.lease("v", &RULES).unwrap().unwrap();
        // The survivor is inside a worker's call on job a: its row locked.
        let held = survivor.conn.savepoint().unwrap();
        held.query_row("SELECT id FROM jobs WHERE id = ?1 FOR UPDATE", args!["a"], |_| Ok(())).unwrap();
        let (target, (tx, rx)) = (database.target.clone(), std::sync::mpsc::channel());
        std::thread::spawn(move || {
            let mut restarted = Db::connect(&target).unwrap();
            let _ = tx.send(restarted.grant_grace(&RULES));
        });
        let graced = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the grace waited on the other coordinator's row lock");
        assert_eq!(graced.unwrap(), 1, "job b only: job a's lease is being served");
        drop(held);
    }

    #[test]
    fn a_stalled_coordinator_blames_nobody_and_lapses_on_one_job_never_quarantine() {
        let rules = Rules { lease_seconds: 0.3, max_failures: 3, max_requeues: 100, quarantine_after: 2 };
        let pause = |s: f64| std::thread::sleep(std::time::Duration::from_secs_f64(s));
        each_backend(|target| {
            let mut db = Db::connect(target).unwrap();
            create(&mut db, "c", 0, &[job("a"), job("b")]);
            worker(&mut db, "w", 0);
            worker(&mut db, "o", 0);
            let a = db.lease("o", &rules).unwrap().unwrap();
            db.complete(&Call { worker: "o", job: "a", token: a.token }, "out", &pb::Progress::default(), &rules).unwrap();
            let strikes = |db: &Db| {
                let (ws, _) = db.workers_page(0, 10, false, RULES.lease_seconds).unwrap();
                let w = ws.into_iter().find(|w| w.worker_id == "w").unwrap();
                (w.strikes, w.quarantined, w.quarantine_reason)
            };
            assert!(db.expire_leases(&rules).unwrap().is_empty());
            db.lease("w", &rules).unwrap().unwrap();
            // The coordinator stalls for longer than a lease (no sweep runs):
            // the next sweep gives the time back instead of expiring.
            pause(STALL_SECONDS + 0.2);
            assert!(db.expire_leases(&rules).unwrap().is_empty(), "a stall is nobody's fault");
            assert_eq!(state(&db, "c", "b").state, RUNNING);
            // Everyone silent (o was last heard before w): no evidence, no strike.
            pause(0.6);
            assert_eq!(db.expire_leases(&rules).unwrap(), vec!["c".to_string()]);
            assert_eq!(state(&db, "c", "b").state, QUEUED);
            assert_eq!(strikes(&db).0, 0, "a lapse nobody else was heard through is no strike");
            // w silent while o is heard: strikes, but lapses on one job alone
            // (a job no worker can even read) never quarantine.
            for round in 1..=3 {
                db.lease("w", &rules).unwrap().unwrap();
                pause(0.2);
                assert!(db.lease("o", &rules).unwrap().is_none());
                pause(0.15);
                assert_eq!(db.expire_leases(&rules).unwrap().len(), 1);
                assert_eq!(strikes(&db), (round, false, String::new()), "round {round}");
            }
            // The same on a second job: evidence against the worker.
            db.cancel("c").unwrap();
            create(&mut db, "d", 0, &[job("e")]);
            db.lease("w", &rules).unwrap().unwrap();
            pause(0.2);
            assert!(db.lease("o", &rules).unwrap().is_none());
            pause(0.15);
            db.expire_leases(&rules).unwrap();
            let (n, quarantined, reason) = strikes(&db);
            assert!(n == 4 && quarantined, "{n} {quarantined}");
            assert!(reason.contains("on 2 different jobs") && reason.contains("lease lapsed while other workers were heard"), "{reason}");
        });
    }
}
