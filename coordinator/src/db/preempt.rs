//! Preemption as the database sees it: read the farm as
//! [`schedule::preempt`] needs it (queued work by user and priority, the
//! running jobs, the idle workers), ask it which jobs to take back, and
//! mark them. A marked job's next heartbeat is answered "release"; its
//! worker checkpoints at the next iteration and gives the job back, which
//! costs the job nothing and resumes it bit-identically on the worker
//! that leases it next.

use super::leases::{head_query, waiting_query};
use super::sql::{self, args};
use super::{now, Db, Rules, PAUSED_PRIO, QUEUED, RUNNING};
use crate::schedule::{self, Policy, Preemption, QueueKey, Queued, Running, Slot};
use stylefarm_proto::labels::Labels;

/// An arbitrary key for the advisory lock a preemption pass takes on
/// PostgreSQL: one coordinator decides at a time, and the next sees what
/// it marked.
const PREEMPT_LOCK: i64 = 0x5354_594c_5052_454d;

impl Db {
    /// Marks the running jobs that queued work outranks (see
    /// [`schedule::preempt`]); returns them with why. A job preempted less
    /// than `min_run` seconds ago is left alone.
    pub fn preempt(&mut self, policy: &Policy, rules: &Rules, min_run: f64) -> sql::Result<Vec<Preemption>> {
        let tx = self.conn.savepoint()?;
        if self.conn.is_postgres() {
            let mine: bool = tx.query_row("SELECT pg_try_advisory_xact_lock(?1)", args![PREEMPT_LOCK], |r| r.get(0))?;
            if !mine {
                return Ok(Vec::new());
            }
        }
        let t = now();
        let owners: Vec<String> = tx.query_map(waiting_query(), args![], |r| r.get(0))?;
        if owners.is_empty() {
            return Ok(Vec::new());
        }
        let running_sql = format!(
            "SELECT j.id, j.owner, j.prio, j.cseq, j.seq, j.preempted, a.started, COALESCE(w.memory_bytes, 0), j.require_labels, COALESCE(w.labels, '')
             FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.fencing_token = j.fencing_token LEFT JOIN workers w ON w.id = j.worker
             WHERE j.state = {RUNNING}"
        );
        let running: Vec<Running> = tx.query_map(&running_sql, args![], |r| {
            let (prio, preempted, started): (i64, f64, f64) = (r.get(2)?, r.get(5)?, r.get(6)?);
            Ok(Running {
                job: r.get(0)?,
                owner: r.get(1)?,
                key: (prio, r.get(3)?, r.get(4)?),
                since_preempted: if preempted > 0.0 { t - preempted } else { f64::INFINITY },
                require: Labels::read(&r.get::<_, String>(8)?),
                worker: Slot { memory: r.get::<_, i64>(7)?.max(0) as u64, labels: Labels::read(&r.get::<_, String>(9)?) },
                leaving: prio >= PAUSED_PRIO || (preempted > 0.0 && preempted >= started),
            })
        })?;
        // The common case: one user waits, nobody else runs, and nothing
        // of theirs that runs is below their queue's head. Nothing to do,
        // without reading the queue.
        if let [owner] = owners.as_slice() {
            let head: QueueKey = tx.query_row(head_query(), args![owner], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            if running.iter().all(|r| r.owner == *owner && r.key.0 <= head.0) {
                return Ok(Vec::new());
            }
        }
        let queued_sql = format!(
            "SELECT owner, prio, MIN(cseq), MIN(seq), CAST(COUNT(*) AS BIGINT), MIN(min_memory), require_labels
             FROM jobs INDEXED BY jobs_fair WHERE state = {QUEUED} AND prio < {PAUSED_PRIO} AND not_before <= ?1 GROUP BY owner, prio, require_labels"
        );
        let queued: Vec<Queued> = tx.query_map(&queued_sql, args![t], |r| {
            Ok(Queued {
                owner: r.get(0)?,
                head: (r.get(1)?, r.get(2)?, r.get(3)?),
                jobs: r.get::<_, i64>(4)?.clamp(0, u32::MAX as i64) as u32,
                min_memory: r.get::<_, i64>(5)?.max(0) as u64,
                require: Labels::read(&r.get::<_, String>(6)?),
            })
        })?;
        let idle_sql = format!(
            "SELECT memory_bytes, labels FROM workers w
             WHERE ended = '' AND quarantined = 0 AND draining = 0 AND last_seen >= ?1
               AND NOT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_held WHERE worker = w.id AND state = {RUNNING})"
        );
        let idle: Vec<Slot> =
            tx.query_map(&idle_sql, args![t - rules.lease_seconds], |r| Ok(Slot { memory: r.get::<_, i64>(0)?.max(0) as u64, labels: Labels::read(&r.get::<_, String>(1)?) }))?;
        let taken = schedule::preempt(&queued, &running, &idle, policy, min_run);
        // A row another writer holds (its worker calling now) is left to
        // the next pass: this one never waits for a lock, so it is never
        // part of a deadlock.
        let mark = format!(
            "UPDATE jobs SET preempted = ?1, preempted_why = ?2 WHERE id = (SELECT id FROM jobs WHERE id = ?3 AND state = {RUNNING} FOR UPDATE SKIP LOCKED)"
        );
        let mut marked = Vec::with_capacity(taken.len());
        for p in taken {
            if tx.execute(&mark, args![t, format!("preempted: {}", p.why), p.job])? > 0 {
                marked.push(p);
            }
        }
        tx.commit()?;
        Ok(marked)
    }
}
