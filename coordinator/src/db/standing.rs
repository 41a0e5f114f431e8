//! Reads for people: each user's work on the farm (what
//! [`schedule::standings`] weighs against their share), and the facts of
//! why a queued job waits (what [`schedule::why_waiting`] words).

use std::collections::HashMap;

use stylefarm_proto::labels::Labels;

use super::leases::running_query;
use super::sql::{self, args, Optional};
use super::{now, Db, PAUSED_PRIO, QUEUED, RUNNING};
use crate::schedule::{self, Policy, Slot, WaitFacts};

impl Db {
    /// Each user's queued and running jobs (users with neither left out).
    pub fn work_by_owner(&self) -> sql::Result<(HashMap<String, u64>, HashMap<String, u32>)> {
        let queued = self.conn.query_map(
            &format!("SELECT owner, CAST(COUNT(*) AS BIGINT) FROM jobs INDEXED BY jobs_fair WHERE state = {QUEUED} GROUP BY owner"),
            args![],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64)),
        )?;
        let running = self.conn.query_map(running_query(), args![], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u32)))?;
        Ok((queued.into_iter().collect(), running.into_iter().collect()))
    }

    /// What queued job `id` waits for (`None`: no such job, or not
    /// queued): its own state, the workers online, its place in its
    /// user's queue and its user's standing under `policy`.
    pub fn wait_facts(&self, id: &str, policy: &Policy, lease_seconds: f64) -> sql::Result<Option<WaitFacts>> {
        type JobRow = (String, i64, i64, i64, f64, String, i64);
        let job: Option<JobRow> = self
            .conn
            .query_row(
                &format!("SELECT owner, prio, cseq, seq, not_before, require_labels, min_memory FROM jobs WHERE id = ?1 AND state = {QUEUED}"),
                args![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
            )
            .optional()?;
        let Some((owner, prio, cseq, seq, not_before, require, min_memory)) = job else { return Ok(None) };
        let t = now();
        let online = format!(
            "SELECT memory_bytes, labels, EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_held WHERE worker = w.id AND state = {RUNNING})
             FROM workers w WHERE ended = '' AND quarantined = 0 AND draining = 0 AND last_seen >= ?1"
        );
        let workers: Vec<(Slot, bool)> = self.conn.query_map(&online, args![t - lease_seconds], |r| {
            Ok((Slot { memory: r.get::<_, i64>(0)?.max(0) as u64, labels: Labels::read(&r.get::<_, String>(1)?) }, r.get(2)?))
        })?;
        let require = Labels::read(&require);
        let can_take = |w: &Slot| w.labels.satisfy(&require) && (w.memory == 0 || min_memory as u64 <= w.memory);
        let idle = workers.iter().filter(|(w, busy)| !busy && can_take(w)).count() as u32;
        let ahead: i64 = self.conn.query_row(
            &format!(
                "SELECT CAST(COUNT(*) AS BIGINT) FROM jobs INDEXED BY jobs_fair
                 WHERE state = {QUEUED} AND owner = ?1 AND (prio < ?2 OR (prio = ?2 AND (cseq < ?3 OR (cseq = ?3 AND seq < ?4))))"
            ),
            args![owner, prio, cseq, seq],
            |r| r.get(0),
        )?;
        let (queued, running) = self.work_by_owner()?;
        let standings = schedule::standings(&queued, &running, policy);
        let below = |s: &schedule::Standing| s.share - s.running as f64;
        let mine = standings.iter().find(|s| s.owner == owner).cloned();
        let before = standings.iter().filter(|s| s.owner != owner && s.queued > 0 && mine.as_ref().is_some_and(|m| below(s) > below(m))).map(|s| s.owner.clone()).collect();
        Ok(Some(WaitFacts {
            paused: prio >= PAUSED_PRIO,
            backoff: (not_before - t).max(0.0),
            require,
            min_memory: min_memory.max(0) as u64,
            online: workers.into_iter().map(|(w, _)| w).collect(),
            idle,
            ahead: ahead.max(0) as u64,
            standing: mine,
            before,
        }))
    }
}
