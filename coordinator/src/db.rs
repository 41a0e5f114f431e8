//! The coordinator's state in SQLite: collections, jobs, attempts, workers.
//! Every change is one transaction, so a coordinator killed at any moment
//! restarts with every accepted collection and job intact.

use rusqlite::{params, Connection, OptionalExtension, Row};
use stylefarm_proto as pb;

/// Schema migrations, applied in order; `PRAGMA user_version` says how many ran.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE collections (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, priority INTEGER NOT NULL, created REAL NOT NULL,
    contents INTEGER NOT NULL, styles INTEGER NOT NULL, variants INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, collection_id TEXT NOT NULL REFERENCES collections(id), seq INTEGER NOT NULL,
    content_index INTEGER NOT NULL, style_index INTEGER NOT NULL, variant_index INTEGER NOT NULL,
    content_name TEXT NOT NULL, style_name TEXT NOT NULL, content_key TEXT NOT NULL, style_key TEXT NOT NULL,
    params_json TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    checkpoint_every INTEGER NOT NULL, snapshot_every INTEGER NOT NULL,
    state INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '', output_key TEXT NOT NULL DEFAULT '',
    worker TEXT NOT NULL DEFAULT '', fencing_token INTEGER NOT NULL DEFAULT 0, lease_deadline REAL NOT NULL DEFAULT 0,
    resume_key TEXT NOT NULL DEFAULT '', resume_iteration INTEGER NOT NULL DEFAULT 0, started_from INTEGER NOT NULL DEFAULT 0,
    iteration INTEGER NOT NULL DEFAULT 0, iterations INTEGER NOT NULL DEFAULT 0,
    content REAL NOT NULL DEFAULT 0, style REAL NOT NULL DEFAULT 0, tv REAL NOT NULL DEFAULT 0,
    total REAL NOT NULL DEFAULT 0, eta REAL NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_state ON jobs(state, not_before);
CREATE INDEX jobs_by_collection ON jobs(collection_id, seq);
CREATE TABLE attempts (
    job_id TEXT NOT NULL, attempt INTEGER NOT NULL, worker TEXT NOT NULL, fencing_token INTEGER NOT NULL,
    started REAL NOT NULL, ended REAL, outcome TEXT, PRIMARY KEY (job_id, attempt)
);
CREATE TABLE workers (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, device TEXT NOT NULL, device_name TEXT NOT NULL,
    memory_bytes INTEGER NOT NULL, registered REAL NOT NULL, last_seen REAL NOT NULL
);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters VALUES ('fencing_token', 0), ('seq', 0);
"#];

pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Why a worker's call about a job was refused.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("no job {0}")]
    NoJob(String),
    #[error("stale lease: job {job} is held under fencing token {current}, not {given}")]
    Stale { job: String, current: u64, given: u64 },
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
}

/// Joins a blended job's style keys in the `style_key` column (keys are
/// `inputs/<sha256>`, so they never contain it).
const STYLE_KEY_SEPARATOR: &str = "\n";

/// A job as the database holds it, for creating rows.
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
}

pub struct Db {
    conn: Connection,
}

/// Job states as stored (the proto enum's numbers).
const QUEUED: i32 = pb::JobState::Queued as i32;
const RUNNING: i32 = pb::JobState::Running as i32;
const SUCCEEDED: i32 = pb::JobState::Succeeded as i32;
const FAILED: i32 = pb::JobState::Failed as i32;
const CANCELLED: i32 = pb::JobState::Cancelled as i32;

fn job_from_row(r: &Row) -> rusqlite::Result<pb::Job> {
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
    })
}

impl Db {
    /// Opens (creating if needed) the database and runs pending migrations.
    pub fn open(path: &std::path::Path) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut db = Self { conn };
        db.migrate()?;
        Ok(db)
    }

    fn migrate(&mut self) -> rusqlite::Result<()> {
        let version: usize = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    fn next(tx: &rusqlite::Transaction, counter: &str) -> rusqlite::Result<u64> {
        tx.execute("UPDATE counters SET value = value + 1 WHERE name = ?1", [counter])?;
        tx.query_row("SELECT value FROM counters WHERE name = ?1", [counter], |r| r.get(0))
    }

    /// Creates a collection and all its jobs in one transaction.
    pub fn create_collection(
        &mut self,
        id: &str,
        name: &str,
        priority: i32,
        shape: (u32, u32, u32),
        jobs: &[NewJob],
    ) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        let seq = Self::next(&tx, "seq")?;
        tx.execute(
            "INSERT INTO collections (id, name, priority, created, contents, styles, variants, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![id, name, priority, now(), shape.0, shape.1, shape.2, seq],
        )?;
        for j in jobs {
            let seq = Self::next(&tx, "seq")?;
            tx.execute(
                "INSERT INTO jobs (id, collection_id, seq, content_index, style_index, variant_index, content_name, style_name,
                   content_key, style_key, params_json, width, height, checkpoint_every, snapshot_every, state, iterations)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                params![
                    j.id, id, seq, j.content_index, j.style_index, j.variant_index, j.content_name, j.style_name, j.content_key,
                    j.style_keys.join(STYLE_KEY_SEPARATOR), j.params_json, j.width, j.height, j.checkpoint_every, j.snapshot_every, QUEUED, j.iterations
                ],
            )?;
        }
        tx.commit()
    }

    pub fn collection(&self, id: &str) -> rusqlite::Result<Option<pb::Collection>> {
        let c = self
            .conn
            .query_row("SELECT * FROM collections WHERE id = ?1", [id], |r| {
                Ok(pb::Collection {
                    collection_id: r.get("id")?,
                    name: r.get("name")?,
                    priority: r.get("priority")?,
                    jobs: Vec::new(),
                    contents: r.get("contents")?,
                    styles: r.get("styles")?,
                    variants: r.get("variants")?,
                    created_unix: r.get("created")?,
                })
            })
            .optional()?;
        let Some(mut c) = c else { return Ok(None) };
        let mut stmt = self.conn.prepare("SELECT * FROM jobs WHERE collection_id = ?1 ORDER BY seq")?;
        c.jobs = stmt.query_map([id], job_from_row)?.collect::<rusqlite::Result<_>>()?;
        Ok(Some(c))
    }

    pub fn collection_ids(&self) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self.conn.prepare("SELECT id FROM collections ORDER BY seq")?;
        let ids = stmt.query_map([], |r| r.get(0))?.collect();
        ids
    }

    /// Output keys of a collection, to check what Fetch may read.
    pub fn collection_of_key(&self, collection: &str, key: &str) -> rusqlite::Result<bool> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM jobs WHERE collection_id = ?1 AND output_key = ?2 AND output_key != ''",
            params![collection, key],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    pub fn register_worker(&mut self, id: &str, r: &pb::RegisterRequest) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO workers (id, name, device, device_name, memory_bytes, registered, last_seen) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![id, r.name, r.device, r.device_name, r.memory_bytes as i64, now()],
        )?;
        Ok(())
    }

    /// Leases the oldest queued job of the highest-priority collection.
    pub fn lease(&mut self, worker: &str, lease_seconds: f64) -> rusqlite::Result<Option<(pb::JobSpec, u64, u32, String)>> {
        let tx = self.conn.transaction()?;
        let t = now();
        let row = tx
            .query_row(
                "SELECT j.id, j.collection_id, j.content_key, j.style_key, j.params_json, j.width, j.height,
                        j.checkpoint_every, j.snapshot_every, j.resume_key, j.resume_iteration, j.attempts
                 FROM jobs j JOIN collections c ON c.id = j.collection_id
                 WHERE j.state = ?1 AND j.not_before <= ?2
                 ORDER BY c.priority DESC, c.seq ASC, j.seq ASC LIMIT 1",
                params![QUEUED, t],
                |r| {
                    Ok((
                        pb::JobSpec {
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
                        },
                        r.get::<_, u32>(10)?,
                        r.get::<_, u32>(11)?,
                    ))
                },
            )
            .optional()?;
        let Some((mut spec, resume_iteration, attempts)) = row else { return Ok(None) };
        let token = Self::next(&tx, "fencing_token")?;
        let attempt = attempts + 1;
        spec.prefix = format!("collections/{}/jobs/{}", spec.collection_id, spec.job_id);
        tx.execute(
            "UPDATE jobs SET state = ?1, attempts = ?2, worker = ?3, fencing_token = ?4, lease_deadline = ?5, started_from = ?6, error = ''
             WHERE id = ?7",
            params![RUNNING, attempt, worker, token as i64, t + lease_seconds, resume_iteration, spec.job_id],
        )?;
        tx.execute(
            "INSERT INTO attempts (job_id, attempt, worker, fencing_token, started) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![spec.job_id, attempt, worker, token as i64, t],
        )?;
        tx.execute("UPDATE workers SET last_seen = ?1 WHERE id = ?2", params![t, worker])?;
        let collection = spec.collection_id.clone();
        tx.commit()?;
        Ok(Some((spec, token, attempt, collection)))
    }

    /// The job's state and current token, checked against `token`.
    fn check(tx: &rusqlite::Transaction, job: &str, token: u64) -> Result<(i32, String), LeaseError> {
        let row: Option<(i32, i64, String)> = tx
            .query_row("SELECT state, fencing_token, collection_id FROM jobs WHERE id = ?1", [job], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let (state, current, collection) = row.ok_or_else(|| LeaseError::NoJob(job.to_string()))?;
        if current as u64 != token || (state != RUNNING && state != CANCELLED) {
            return Err(LeaseError::Stale { job: job.to_string(), current: current as u64, given: token });
        }
        Ok((state, collection))
    }

    fn end_attempt(tx: &rusqlite::Transaction, job: &str, token: u64, outcome: &str) -> rusqlite::Result<()> {
        tx.execute(
            "UPDATE attempts SET ended = ?1, outcome = ?2 WHERE job_id = ?3 AND fencing_token = ?4",
            params![now(), outcome, job, token as i64],
        )?;
        Ok(())
    }

    /// Extends the lease, records progress and a checkpoint. Returns whether
    /// the job was cancelled, and its collection.
    pub fn heartbeat(&mut self, r: &pb::HeartbeatRequest, lease_seconds: f64) -> Result<(bool, String), LeaseError> {
        let tx = self.conn.transaction()?;
        let (state, collection) = Self::check(&tx, &r.job_id, r.fencing_token)?;
        if state == CANCELLED {
            Self::end_attempt(&tx, &r.job_id, r.fencing_token, "cancelled")?;
            tx.commit()?;
            return Ok((true, collection));
        }
        let p = r.progress.clone().unwrap_or_default();
        tx.execute(
            "UPDATE jobs SET lease_deadline = ?1, iteration = ?2, content = ?3, style = ?4, tv = ?5, total = ?6, eta = ?7 WHERE id = ?8",
            params![now() + lease_seconds, p.iteration, p.content, p.style, p.tv, p.total, p.eta_seconds, r.job_id],
        )?;
        if !r.checkpoint_key.is_empty() {
            tx.execute(
                "UPDATE jobs SET resume_key = ?1, resume_iteration = ?2 WHERE id = ?3",
                params![r.checkpoint_key, r.checkpoint_iteration, r.job_id],
            )?;
        }
        tx.execute("UPDATE workers SET last_seen = ?1 WHERE id = ?2", params![now(), r.worker_id])?;
        tx.commit()?;
        Ok((false, collection))
    }

    pub fn complete(&mut self, r: &pb::CompleteRequest) -> Result<String, LeaseError> {
        let tx = self.conn.transaction()?;
        let (state, collection) = Self::check(&tx, &r.job_id, r.fencing_token)?;
        if state == CANCELLED {
            return Err(LeaseError::Stale { job: r.job_id.clone(), current: 0, given: r.fencing_token });
        }
        let p = r.progress.clone().unwrap_or_default();
        tx.execute(
            "UPDATE jobs SET state = ?1, output_key = ?2, iteration = ?3, content = ?4, style = ?5, tv = ?6, total = ?7, eta = 0 WHERE id = ?8",
            params![SUCCEEDED, r.output_key, p.iteration, p.content, p.style, p.tv, p.total, r.job_id],
        )?;
        Self::end_attempt(&tx, &r.job_id, r.fencing_token, "succeeded")?;
        tx.commit()?;
        Ok(collection)
    }

    /// Records a failure: bad input ends the job; other kinds retry with
    /// backoff until `max_failures`.
    pub fn fail(&mut self, r: &pb::FailRequest, max_failures: u32) -> Result<String, LeaseError> {
        let tx = self.conn.transaction()?;
        let (_, collection) = Self::check(&tx, &r.job_id, r.fencing_token)?;
        let failures: u32 = tx.query_row("SELECT failures FROM jobs WHERE id = ?1", [&r.job_id], |row| row.get(0))?;
        let failures = failures + 1;
        let bad_input = r.kind == pb::FailureKind::BadInput as i32;
        let (state, not_before) = if bad_input || failures >= max_failures { (FAILED, 0.0) } else { (QUEUED, now() + backoff(failures)) };
        tx.execute(
            "UPDATE jobs SET state = ?1, failures = ?2, not_before = ?3, error = ?4, worker = '' WHERE id = ?5",
            params![state, failures, not_before, r.message, r.job_id],
        )?;
        Self::end_attempt(&tx, &r.job_id, r.fencing_token, &format!("failed: {}", r.message))?;
        tx.commit()?;
        Ok(collection)
    }

    /// Gives the job back now (pre-emption), resumable from `checkpoint_key`.
    pub fn release(&mut self, r: &pb::ReleaseRequest) -> Result<String, LeaseError> {
        let tx = self.conn.transaction()?;
        let (_, collection) = Self::check(&tx, &r.job_id, r.fencing_token)?;
        if !r.checkpoint_key.is_empty() {
            tx.execute(
                "UPDATE jobs SET resume_key = ?1, resume_iteration = ?2 WHERE id = ?3",
                params![r.checkpoint_key, r.checkpoint_iteration, r.job_id],
            )?;
        }
        tx.execute("UPDATE jobs SET state = ?1, worker = '', not_before = 0 WHERE id = ?2 AND state = ?3", params![QUEUED, r.job_id, RUNNING])?;
        Self::end_attempt(&tx, &r.job_id, r.fencing_token, "released")?;
        tx.commit()?;
        Ok(collection)
    }

    /// Requeues every job whose lease lapsed (its attempt counts as a
    /// failure); returns the collections touched.
    pub fn expire_leases(&mut self, max_failures: u32) -> rusqlite::Result<Vec<String>> {
        let tx = self.conn.transaction()?;
        let t = now();
        let lapsed: Vec<(String, String, i64, u32)> = {
            let mut stmt = tx.prepare("SELECT id, collection_id, fencing_token, failures FROM jobs WHERE state = ?1 AND lease_deadline < ?2")?;
            let rows = stmt.query_map(params![RUNNING, t], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut touched = Vec::new();
        for (job, collection, token, failures) in lapsed {
            let failures = failures + 1;
            let state = if failures >= max_failures { FAILED } else { QUEUED };
            tx.execute(
                "UPDATE jobs SET state = ?1, failures = ?2, worker = '', error = ?3 WHERE id = ?4",
                params![state, failures, format!("lease lapsed ({failures} of {max_failures} failures allowed)"), job],
            )?;
            Self::end_attempt(&tx, &job, token as u64, "lease lapsed")?;
            touched.push(collection);
        }
        tx.commit()?;
        Ok(touched)
    }

    /// `(state name, jobs)` for every state, and the jobs ready to lease now.
    pub fn counts(&self) -> rusqlite::Result<(Vec<(&'static str, i64)>, i64)> {
        let mut by_state = Vec::new();
        for (state, name) in [(QUEUED, "queued"), (RUNNING, "running"), (SUCCEEDED, "succeeded"), (FAILED, "failed"), (CANCELLED, "cancelled")] {
            let n: i64 = self.conn.query_row("SELECT COUNT(*) FROM jobs WHERE state = ?1", [state], |r| r.get(0))?;
            by_state.push((name, n));
        }
        let ready: i64 = self.conn.query_row("SELECT COUNT(*) FROM jobs WHERE state = ?1 AND not_before <= ?2", params![QUEUED, now()], |r| r.get(0))?;
        Ok((by_state, ready))
    }

    /// Cancels every job of a collection that has not ended.
    pub fn cancel(&mut self, collection: &str) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE jobs SET state = ?1, error = 'cancelled' WHERE collection_id = ?2 AND state IN (?3, ?4)",
            params![CANCELLED, collection, QUEUED, RUNNING],
        )?;
        Ok(())
    }
}

/// Seconds before retry number `failures`: 1, 2, 4, … capped at 30.
pub fn backoff(failures: u32) -> f64 {
    (2f64.powi(failures.saturating_sub(1) as i32)).min(30.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> NewJob {
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
        }
    }

    #[test]
    fn survives_reopen_and_fences_stale_leases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("farm.db");
        {
            let mut db = Db::open(&path).unwrap();
            db.create_collection("c1", "test", 0, (1, 1, 1), &[job("j1")]).unwrap();
        }
        let mut db = Db::open(&path).unwrap();
        assert_eq!(db.collection("c1").unwrap().unwrap().jobs.len(), 1, "nothing lost across a reopen");
        let (spec, t1, attempt, _) = db.lease("w1", 0.0).unwrap().unwrap();
        assert_eq!((spec.job_id.as_str(), attempt), ("j1", 1));
        // The lease lapses at once (0 s); the job goes back and a second worker takes it.
        db.expire_leases(3).unwrap();
        let (_, t2, attempt, _) = db.lease("w2", 60.0).unwrap().unwrap();
        assert!(t2 > t1 && attempt == 2);
        let stale = pb::CompleteRequest { worker_id: "w1".into(), job_id: "j1".into(), fencing_token: t1, output_key: "x".into(), progress: None };
        assert!(matches!(db.complete(&stale), Err(LeaseError::Stale { .. })));
        let hb = pb::HeartbeatRequest { worker_id: "w1".into(), job_id: "j1".into(), fencing_token: t1, ..Default::default() };
        assert!(matches!(db.heartbeat(&hb, 60.0), Err(LeaseError::Stale { .. })));
        let good = pb::CompleteRequest { fencing_token: t2, worker_id: "w2".into(), ..stale };
        db.complete(&good).unwrap();
        assert_eq!(db.collection("c1").unwrap().unwrap().jobs[0].state, SUCCEEDED);
    }

    #[test]
    fn bad_input_is_not_retried_and_other_failures_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("farm.db")).unwrap();
        db.create_collection("c", "t", 0, (2, 1, 1), &[job("a"), job("b")]).unwrap();
        let (spec, t, _, _) = db.lease("w", 60.0).unwrap().unwrap();
        let fail = |kind: pb::FailureKind, token| pb::FailRequest { worker_id: "w".into(), job_id: spec.job_id.clone(), fencing_token: token, kind: kind as i32, message: "x".into() };
        db.fail(&fail(pb::FailureKind::BadInput, t), 3).unwrap();
        let jobs = db.collection("c").unwrap().unwrap().jobs;
        assert_eq!(jobs.iter().find(|j| j.job_id == spec.job_id).unwrap().state, FAILED);
        let (spec, t, _, _) = db.lease("w", 60.0).unwrap().unwrap();
        let fail = |token| pb::FailRequest { worker_id: "w".into(), job_id: spec.job_id.clone(), fencing_token: token, kind: pb::FailureKind::Internal as i32, message: "boom".into() };
        db.fail(&fail(t), 2).unwrap();
        let j = db.collection("c").unwrap().unwrap().jobs.into_iter().find(|j| j.job_id == spec.job_id).unwrap();
        assert_eq!(j.state, QUEUED, "retried after an internal failure");
        assert!(db.lease("w", 60.0).unwrap().is_none(), "not before its backoff");
    }

    #[test]
    fn priority_first_then_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("farm.db")).unwrap();
        db.create_collection("low", "l", 0, (1, 1, 1), &[job("l1")]).unwrap();
        db.create_collection("high", "h", 5, (2, 1, 1), &[job("h1"), job("h2")]).unwrap();
        let order: Vec<String> = (0..3).map(|_| db.lease("w", 60.0).unwrap().unwrap().0.job_id).collect();
        assert_eq!(order, ["h1", "h2", "l1"]);
    }
}
