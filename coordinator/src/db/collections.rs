//! Collections and their jobs as people see them: submitting one (all its
//! jobs in one transaction, once per idempotency key), reading it back a
//! page or a grid screen at a time, and a person's Cancel or Retry.

use stylefarm_proto as pb;

use super::sql::{self, args, Optional, Row};
use super::{job_from_row, now, state_of, CallError, Db, FarmSummary, JOB_PARAMS, JOB_STYLE_KEYS, QUEUED, RUNNING, STYLE_KEY_SEPARATOR};
use crate::machine::{self, Budget, Event};

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
    /// Most jobs its owner may have queued, these included (`--max-queued`).
    pub max_queued: Option<u64>,
    /// The labels a worker needs to take its jobs (written form, "" for
    /// none).
    pub require: String,
}

#[derive(Debug, Clone)]
pub struct NewParams {
    /// Every key, as a worker receives them.
    pub params_json: String,
    pub iterations: u32,
    /// Estimated peak memory at the job's size.
    pub min_memory: u64,
}

/// Seconds before retry number `failures`: 1, 2, 4, … capped at 30.
/// How many of `jobs` are in each state.
fn count(jobs: &[pb::Job]) -> pb::JobCounts {
    let mut counts = pb::JobCounts::default();
    for j in jobs {
        counts.add(pb::JobState::try_from(j.state).unwrap_or_default(), 1);
    }
    counts
}

/// A `collections` row as the wire has it, without its jobs, counts or
/// columns.
fn collection_from_row(r: &Row) -> sql::Result<pb::Collection> {
    Ok(pb::Collection {
        collection_id: r.get("id")?,
        name: r.get("name")?,
        priority: r.get("priority")?,
        contents: r.get("contents")?,
        styles: r.get("styles")?,
        variants: r.get("variants")?,
        created_unix: r.get("created")?,
        paused: r.get::<_, i64>("paused")? != 0,
        stored_bytes: (r.get::<_, i64>("folder_bytes")? + r.get::<_, i64>("input_bytes")?).max(0)
            as u64,
        require: stylefarm_proto::labels::Labels::read(&r.get::<_, String>("require_labels")?).iter().map(str::to_string).collect(),
        ..Default::default()
    })
}

/// The queue order of a collection's jobs (`jobs.prio`, ascending): its
/// priority, highest first, or past every leasable job when paused.
pub(super) fn queue_prio(priority: i32, paused: bool) -> i64 {
    if paused {
        super::PAUSED_PRIO
    } else {
        -i64::from(priority)
    }
}

/// Rows read with their sequence numbers, `limit` at most: the rows, and
/// the last one's number when the page is full (more may follow).
fn page_of<T>(rows: Vec<(T, i64)>, limit: u32) -> (Vec<T>, Option<i64>) {
    let next = (rows.len() as u32 == limit).then(|| rows.last().map(|(_, seq)| *seq)).flatten();
    (rows.into_iter().map(|(row, _)| row).collect(), next)
}

impl Db {
    /// The collection an earlier submit with this idempotency key created,
    /// and its job count.
    pub fn submitted(&self, owner: &str, idempotency_key: &str) -> sql::Result<Option<(String, u32)>> {
        if idempotency_key.is_empty() {
            return Ok(None);
        }
        self.conn
            .query_row(
                "SELECT c.id, (SELECT COUNT(*) FROM jobs j WHERE j.collection_id = c.id) FROM collections c WHERE owner = ?1 AND idempotency_key = ?2 AND deleting = 0",
                args![owner, idempotency_key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
    }

    /// Creates a collection and all its jobs in one transaction; returns
    /// its id and job count, or those of the collection an earlier submit
    /// with the same idempotency key created.
    pub fn create_collection(&mut self, c: &NewCollection) -> Result<(String, u32), CallError> {
        if let Some(existing) = self.submitted(&c.owner, &c.idempotency_key)? {
            return Ok(existing);
        }
        let tx = self.conn.savepoint()?;
        if let Some(max) = c.max_queued {
            let queued: i64 = tx.query_row(&format!("SELECT CAST(COUNT(*) AS BIGINT) FROM jobs INDEXED BY jobs_fair WHERE state = {QUEUED} AND owner = ?1"), args![c.owner], |r| r.get(0))?;
            if queued as u64 + c.jobs.len() as u64 > max {
                return Err(CallError::OverQuota { queued: queued as u64, adding: c.jobs.len() as u64, max });
            }
        }
        let seq = Self::next(&tx, "seq")?;
        let collection_seq = seq as i64;
        tx.execute(
            "INSERT INTO collections (id, name, priority, created, contents, styles, variants, seq, owner, idempotency_key, notify_url, require_labels)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            args![c.id, c.name, c.priority, now(), c.shape.0, c.shape.1, c.shape.2, seq, c.owner, c.idempotency_key, c.notify_url, c.require],
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
                   prio, cseq, owner, require_labels)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)",
                args![
                    j.id, c.id, seq, j.content_index, j.style_index, j.variant_index, j.content_name, j.style_name, j.content_key,
                    "", "", j.width, j.height, j.checkpoint_every, j.snapshot_every, QUEUED,
                    j.iterations, j.min_memory as i64, queue_prio(c.priority, false), collection_seq, c.owner, c.require
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
        c.set_counts(count(&c.jobs));
        c.columns = self.grid_columns(id)?;
        Ok(Some((owner, c)))
    }

    /// A collection without its jobs (counts unset), and its owner.
    pub fn collection_header(&self, id: &str) -> sql::Result<Option<(String, pb::Collection)>> {
        self
            .conn
            .query_row("SELECT * FROM collections WHERE id = ?1 AND deleting = 0", args![id], |r| Ok((r.get::<_, String>("owner")?, collection_from_row(r)?)))
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
        let mut columns = self.conn.query_map(
            &format!("SELECT style_index, variant_index, style_name, {JOB_PARAMS} FROM jobs WHERE collection_id = ?1 AND content_index = 0 ORDER BY seq"),
            args![collection],
            |r| Ok(pb::Column { style_index: r.get(0)?, variant_index: r.get(1)?, style_name: r.get(2)?, params_json: r.get(3)?, label: String::new() }),
        )?;
        // Each variant's label, from the first style's columns (a variant's
        // parameters are the same in every column).
        let mut params = Vec::new();
        for c in columns.iter().filter(|c| c.style_index == 0) {
            let at = c.variant_index as usize;
            if params.len() <= at {
                params.resize(at + 1, serde_json::Value::Null);
            }
            params[at] = serde_json::from_str(&c.params_json).unwrap_or(serde_json::Value::Null);
        }
        let labels = stylefarm_params::variants::labels(&params);
        for c in &mut columns {
            c.label = labels.get(c.variant_index as usize).cloned().unwrap_or_default();
        }
        Ok(columns)
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
        self.conn.query_map("SELECT id FROM collections WHERE (CAST(?1 AS TEXT) IS NULL OR owner = ?1) AND deleting = 0 ORDER BY seq", args![owner], |r| r.get(0))
    }

    /// One job, its attempts and its collection's owner.
    pub fn job(&self, id: &str) -> sql::Result<Option<(String, pb::JobDetail)>> {
        let job = self
            .conn
            .query_row("SELECT j.*, c.owner AS owner FROM jobs j JOIN collections c ON c.id = j.collection_id WHERE j.id = ?1 AND c.deleting = 0", args![id], |r| {
                Ok((r.get::<_, String>("owner")?, job_from_row(r)?))
            })
            .optional()?;
        let Some((owner, job)) = job else { return Ok(None) };
        let attempts = self.conn.query_map(
            "SELECT attempt, worker, started, ended, outcome, resumed_from, worker_name FROM attempts WHERE job_id = ?1 ORDER BY attempt",
            args![id],
            |r| {
                Ok(pb::Attempt {
                    attempt: r.get(0)?,
                    worker: r.get(1)?,
                    started_unix: r.get(2)?,
                    ended_unix: r.get::<_, Option<f64>>(3)?.unwrap_or(0.0),
                    outcome: r.get::<_, Option<String>>(4)?.unwrap_or_else(|| "running".into()),
                    resumed_from: r.get(5)?,
                    worker_name: r.get(6)?,
                })
            },
        )?;
        let params_json = self.job_params(id)?.unwrap_or_default();
        let variant_label = self
            .grid_columns(&job.collection_id)?
            .into_iter()
            .find(|c| c.variant_index == job.variant_index)
            .map(|c| c.label)
            .unwrap_or_default();
        Ok(Some((owner, pb::JobDetail { job: Some(job), attempts, params_json, variant_label, waiting: String::new() })))
    }

    /// The farm's jobs by state.
    pub fn counts(&self) -> sql::Result<pb::JobCounts> {
        let mut counts = pb::JobCounts::default();
        for (state, n) in self.conn.query_map("SELECT state, COUNT(*) FROM jobs GROUP BY state", args![], |r| Ok((r.get::<_, i32>(0)?, r.get::<_, u32>(1)?)))? {
            counts.add(pb::JobState::try_from(state).unwrap_or_default(), n);
        }
        Ok(counts)
    }

    /// The queued jobs by the least memory each needs (bytes, jobs).
    pub fn queued_by_memory(&self) -> sql::Result<Vec<(u64, u64)>> {
        self.conn.query_map("SELECT min_memory, COUNT(*) FROM jobs WHERE state = ?1 GROUP BY min_memory", args![QUEUED], |r| {
            Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get::<_, i64>(1)?.max(0) as u64))
        })
    }

    /// How many of a collection's jobs are in each state.
    pub fn job_counts(&self, collection: &str) -> sql::Result<pb::JobCounts> {
        let mut counts = pb::JobCounts::default();
        let rows = self.conn.query_map("SELECT state, COUNT(*) FROM jobs WHERE collection_id = ?1 GROUP BY state", args![collection], |r| {
            Ok((r.get::<_, i32>(0)?, r.get::<_, u32>(1)?))
        })?;
        for (state, n) in rows {
            counts.add(pb::JobState::try_from(state).unwrap_or_default(), n);
        }
        Ok(counts)
    }

    /// One page of the collections `owner` may see (every one: `None`),
    /// oldest first, without their jobs but with their counts: those after
    /// sequence number `after`. Returns the page and the last one's
    /// sequence number when more may follow.
    pub fn collections_page(&self, owner: Option<&str>, after: i64, limit: u32) -> sql::Result<(Vec<pb::Collection>, Option<i64>)> {
        let rows: Vec<(pb::Collection, i64)> = self.conn.query_map(
            "SELECT * FROM collections WHERE (CAST(?1 AS TEXT) IS NULL OR owner = ?1) AND seq > ?2 AND deleting = 0 ORDER BY seq LIMIT ?3",
            args![owner, after, limit],
            |r| Ok((collection_from_row(r)?, r.get("seq")?)),
        )?;
        let (mut page, next) = page_of(rows, limit);
        for c in &mut page {
            let counts = self.job_counts(&c.collection_id)?;
            c.set_counts(counts);
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
        Ok(page_of(rows, limit))
    }

    /// The owner of a collection, deleted or being deleted too: who may
    /// ask to delete it (again).
    pub fn owner_even_deleted(&self, collection: &str) -> sql::Result<Option<String>> {
        self.conn.query_row("SELECT owner FROM collections WHERE id = ?1", args![collection], |r| r.get(0)).optional()
    }

    /// The owner of a collection, if it exists (and is not being deleted).
    pub fn owner(&self, collection: &str) -> sql::Result<Option<String>> {
        self.conn.query_row("SELECT owner FROM collections WHERE id = ?1 AND deleting = 0", args![collection], |r| r.get(0)).optional()
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

    /// Pauses or resumes collection `id` and/or sets its priority; its jobs
    /// take their new place in the queue at once (a paused one's past
    /// every leasable job: the lease never reaches them). False: no such
    /// collection.
    pub fn update_collection(&mut self, id: &str, paused: Option<bool>, priority: Option<i32>) -> sql::Result<bool> {
        let tx = self.conn.savepoint()?;
        let row: Option<(i32, i64)> = tx
            .query_row("SELECT priority, paused FROM collections WHERE id = ?1 AND deleting = 0", args![id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((was_priority, was_paused)) = row else {
            return Ok(false);
        };
        let (priority, paused) = (priority.unwrap_or(was_priority), paused.unwrap_or(was_paused != 0));
        tx.execute("UPDATE collections SET priority = ?1, paused = ?2 WHERE id = ?3", args![priority, i64::from(paused), id])?;
        tx.execute("UPDATE jobs SET prio = ?1 WHERE collection_id = ?2", args![queue_prio(priority, paused), id])?;
        tx.commit()?;
        Ok(true)
    }

    /// A job's parameters (JSON, every key present): its own if it has
    /// them, else its variant's.
    pub fn job_params(&self, job: &str) -> sql::Result<Option<String>> {
        self.conn.query_row(&format!("SELECT {JOB_PARAMS} FROM jobs WHERE id = ?1"), args![job], |r| r.get(0)).optional()
    }

    /// A person's Cancel (queued or running → cancelled), Retry (failed →
    /// queued, its budgets and error cleared) or Rerender (any ended job,
    /// with `changed` parameters) of one job; `changed` parameters also
    /// start it from the init (a checkpoint of the old
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
            Event::Retry | Event::Rerender => {
                tx.execute(
                    "UPDATE jobs SET state = ?1, failures = 0, requeues = 0, not_before = 0, error = '' WHERE id = ?2",
                    args![step.to.to_wire() as i32, job],
                )?;
                if let Some(p) = changed {
                    // (A re-rendered success's earlier output stays in its
                    // attempt's folder; the job's is the next one's.)
                    tx.execute(
                        "UPDATE jobs SET params_json = ?1, iterations = ?2, min_memory = ?3, resume_key = '', resume_iteration = 0,
                                         iteration = 0, content = 0, style = 0, tv = 0, total = 0, eta = 0, output_key = ''
                         WHERE id = ?4",
                        args![p.params_json, p.iterations, i64::try_from(p.min_memory).unwrap_or(i64::MAX), job],
                    )?;
                }
                tx.execute(
                    "UPDATE collections SET notified = 0, notify_delivery = '', notify_tries = 0, notify_next = 0 WHERE id = ?1 AND notify_url != ''",
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
