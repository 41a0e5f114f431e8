//! The workers' rows: registration (a restart under the same name replaces
//! the old row), liveness as a state ([`worker_state`], pure and
//! table-tested), the list an operator reads, and the operator's actions
//! (drain, resume, forget). A row is never deleted: attempts name their
//! worker, and `include_gone` shows every row there ever was.

use super::sql::{self, args, Optional, Row};
use stylefarm_proto as pb;
use stylefarm_proto::labels::Labels;

use super::{now, CallError, Db, Rules, RUNNING};
use crate::limits::GONE_AFTER_SECONDS;

/// How a row ended (`workers.ended`): still there, said goodbye, replaced
/// by a registration under its name, forgotten by an operator.
const STOPPED: &str = "stopped";
const REPLACED: &str = "replaced";
const FORGOTTEN: &str = "forgotten";

/// A worker's state from its row: how it ended first, then quarantine,
/// then whether it was heard within a lease length.
pub fn worker_state(
    ended: &str,
    quarantined: bool,
    silent_for: f64,
    lease_seconds: f64,
) -> pb::WorkerState {
    match ended {
        STOPPED => pb::WorkerState::Stopped,
        REPLACED => pb::WorkerState::Replaced,
        FORGOTTEN => pb::WorkerState::Forgotten,
        _ if quarantined => pb::WorkerState::Quarantined,
        _ if silent_for > lease_seconds => pb::WorkerState::Lost,
        _ => pb::WorkerState::Online,
    }
}

/// The columns [`info_of`] reads, `?1` being RUNNING.
const INFO_COLUMNS: &str = "w.id, w.name, w.device, w.device_name, w.memory_bytes, w.last_seen, w.strikes, w.quarantined,
    (SELECT j.id FROM jobs j WHERE j.worker = w.id AND j.state = ?1 LIMIT 1), w.quarantine_reason, w.rowid,
    w.ended, w.draining, w.registered, w.labels";

fn info_of(r: &Row, t: f64, lease_seconds: f64) -> sql::Result<(pb::WorkerInfo, i64)> {
    let (quarantined, last_seen, ended): (bool, f64, String) = (r.get(7)?, r.get(5)?, r.get(11)?);
    let state = worker_state(&ended, quarantined, t - last_seen, lease_seconds);
    Ok((
        pb::WorkerInfo {
            worker_id: r.get(0)?,
            name: r.get(1)?,
            device: r.get(2)?,
            device_name: r.get(3)?,
            memory_bytes: r.get::<_, i64>(4)?.max(0) as u64,
            last_seen_unix: last_seen,
            strikes: r.get(6)?,
            quarantined,
            current_job: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
            quarantine_reason: r.get(9)?,
            state: state as i32,
            draining: r.get(12)?,
            registered_unix: r.get(13)?,
            labels: Labels::read(&r.get::<_, String>(14)?).iter().map(str::to_string).collect(),
        },
        r.get(10)?,
    ))
}

impl Db {
    /// Registers a worker under `id`. A worker of the same name that is
    /// still alive (not ended, and seen within a lease) keeps its name: the
    /// registration is refused, naming it. Rows under the name that are
    /// gone (lost, stopped) are replaced by the new one, a lease they held
    /// released at no cost to its job. Returns the replaced ids.
    pub fn register_worker(
        &mut self,
        id: &str,
        r: &pb::RegisterRequest,
        rules: &Rules,
    ) -> Result<Vec<String>, CallError> {
        let t = now();
        let earlier: Vec<(String, String, f64)> = {
            self.conn.query_map(
                "SELECT id, ended, last_seen FROM workers INDEXED BY workers_by_name WHERE name = ?1 AND ended IN ('', 'stopped') FOR UPDATE",
                args![r.name],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?
        };
        if let Some((alive, _, seen)) = earlier.iter().find(|(_, ended, seen)| ended.is_empty() && t - seen <= rules.lease_seconds) {
            return Err(CallError::NameTaken { name: r.name.clone(), worker: alive.clone(), seen: (t - seen).max(0.0), lease: rules.lease_seconds });
        }
        for (old, _, _) in &earlier {
            self.give_back_leases(old, "released: its worker registered again", rules)?;
            self.conn.execute(
                "UPDATE workers SET ended = ?1 WHERE id = ?2",
                args![REPLACED, old],
            )?;
        }
        self.conn.execute(
            "INSERT INTO workers (id, name, device, device_name, memory_bytes, registered, last_seen, labels) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
            args![id, r.name, r.device, r.device_name, i64::try_from(r.memory_bytes).unwrap_or(i64::MAX), t, Labels::parse(&r.labels).map(|l| l.written()).unwrap_or_default()],
        )?;
        Ok(earlier.into_iter().map(|(id, _, _)| id).collect())
    }

    /// The id of the worker an operator names: a worker's id, or its name
    /// (the newest registration under it that was not replaced or
    /// forgotten). NotRegistered when neither is known.
    pub fn resolve_worker(&self, id_or_name: &str) -> Result<String, CallError> {
        let by_id: Option<String> = self.conn.query_row("SELECT id FROM workers WHERE id = ?1", args![id_or_name], |r| r.get(0)).optional()?;
        if let Some(id) = by_id {
            return Ok(id);
        }
        let by_name: Option<String> = self
            .conn
            .query_row(
                "SELECT id FROM workers INDEXED BY workers_by_name WHERE name = ?1 AND ended IN ('', 'stopped') ORDER BY registered DESC LIMIT 1",
                args![id_or_name],
                |r| r.get(0),
            )
            .optional()?;
        by_name.ok_or_else(|| CallError::NotRegistered(id_or_name.to_string()))
    }

    /// A worker says goodbye: STOPPED, its lease (if it still holds one)
    /// released. A repeat is answered OK.
    pub fn deregister_worker(&mut self, id: &str, rules: &Rules) -> Result<(), CallError> {
        let ended = self.how_ended(id)?;
        if !ended.is_empty() && ended != STOPPED {
            return Err(CallError::Gone {
                worker: id.to_string(),
                how: ended,
            });
        }
        self.give_back_leases(id, "released: its worker stopped", rules)?;
        self.conn.execute(
            "UPDATE workers SET ended = ?1, last_seen = ?2 WHERE id = ?3",
            args![STOPPED, now(), id],
        )?;
        Ok(())
    }

    /// How a worker's row ended ("" while it lives); NotRegistered if
    /// there is no such row.
    fn how_ended(&self, id: &str) -> Result<String, CallError> {
        let ended: Option<String> = self
            .conn
            .query_row("SELECT ended FROM workers WHERE id = ?1", args![id], |r| {
                r.get(0)
            })
            .optional()?;
        ended.ok_or_else(|| CallError::NotRegistered(id.to_string()))
    }

    /// Releases every lease `worker` holds (at most one), recording
    /// `outcome` on the attempt.
    fn give_back_leases(
        &mut self,
        worker: &str,
        outcome: &str,
        rules: &Rules,
    ) -> Result<(), CallError> {
        let held: Vec<(String, i64)> = {
            // The state as a literal, as the partial index's own condition.
            let held = format!("SELECT id, fencing_token FROM jobs INDEXED BY jobs_held WHERE worker = ?1 AND state = {}", super::RUNNING);
            self.conn.query_map(&held, args![worker], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
        };
        for (job, token) in held {
            let call = super::Call {
                worker,
                job: &job,
                token: token as u64,
            };
            self.worker_event(
                &call,
                crate::machine::Event::Release,
                rules,
                outcome,
                &[],
                |_, _| Ok(()),
            )?;
        }
        Ok(())
    }

    /// One page of the workers, newest registration first, with the job
    /// each holds: those after `after` (a registration's rowid, as the
    /// previous page's token said), at most `limit`, and the token of the
    /// next page if there is one. Rows gone for more than
    /// [`GONE_AFTER_SECONDS`], replaced or forgotten show only with
    /// `include_gone`.
    pub fn workers_page(
        &self,
        after: i64,
        limit: u32,
        include_gone: bool,
        lease_seconds: f64,
    ) -> sql::Result<(Vec<pb::WorkerInfo>, Option<i64>)> {
        let t = now();
        let rows = self.conn.query_map(
                &format!(
                    "SELECT {INFO_COLUMNS} FROM workers w
                     WHERE (CAST(?2 AS BIGINT) = 0 OR w.rowid < ?2) AND (CAST(?4 AS BIGINT) != 0 OR (w.ended IN ('', 'stopped') AND w.last_seen >= ?5))
                     ORDER BY w.rowid DESC LIMIT ?3"
                ),
                args![
                    RUNNING,
                    after,
                    limit as i64 + 1,
                    include_gone,
                    t - GONE_AFTER_SECONDS
                ],
                |r| info_of(r, t, lease_seconds),
            )?;
        let more = rows.len() > limit as usize;
        let page: Vec<(pb::WorkerInfo, i64)> = rows.into_iter().take(limit as usize).collect();
        let next = if more {
            page.last().map(|(_, rowid)| *rowid)
        } else {
            None
        };
        Ok((page.into_iter().map(|(w, _)| w).collect(), next))
    }

    /// One worker as [`Db::workers_page`] shows it.
    pub fn worker(&self, id: &str, lease_seconds: f64) -> sql::Result<Option<pb::WorkerInfo>> {
        let t = now();
        let sql = format!("SELECT {INFO_COLUMNS} FROM workers w WHERE w.id = ?2");
        self.conn
            .query_row(&sql, args![RUNNING, id], |r| info_of(r, t, lease_seconds))
            .optional()
            .map(|w| w.map(|(w, _)| w))
    }

    /// Drain (`true`): no new lease for the worker; resume (`false`): it
    /// leases again, its quarantine (if any) lifted and its strikes
    /// cleared.
    pub fn set_draining(&mut self, id: &str, draining: bool) -> Result<(), CallError> {
        self.how_ended(id)?;
        if draining {
            self.conn
                .execute("UPDATE workers SET draining = 1 WHERE id = ?1", args![id])?;
        } else {
            self.conn.execute(
                "UPDATE workers SET draining = 0, quarantined = 0, strikes = 0, strike_jobs = '', quarantine_reason = '' WHERE id = ?1",
                args![id],
            )?;
        }
        Ok(())
    }

    /// Takes a lost or stopped worker off the list. Refused while it is
    /// online or holds a lease.
    pub fn forget_worker(&mut self, id: &str, lease_seconds: f64) -> Result<(), CallError> {
        let Some(w) = self.worker(id, lease_seconds)? else {
            return Err(CallError::NotRegistered(id.to_string()));
        };
        let state = pb::WorkerState::try_from(w.state).unwrap_or_default();
        let silent = now() - w.last_seen_unix > lease_seconds;
        let may = matches!(
            state,
            pb::WorkerState::Lost
                | pb::WorkerState::Stopped
                | pb::WorkerState::Replaced
                | pb::WorkerState::Forgotten
        ) || (state == pb::WorkerState::Quarantined && silent);
        if !may || !w.current_job.is_empty() {
            let why = if w.current_job.is_empty() {
                "it is online".to_string()
            } else {
                format!("it holds job {}", w.current_job)
            };
            return Err(CallError::Busy {
                worker: id.to_string(),
                why,
            });
        }
        if matches!(
            state,
            pb::WorkerState::Replaced | pb::WorkerState::Forgotten
        ) {
            return Ok(());
        }
        self.conn.execute(
            "UPDATE workers SET ended = ?1 WHERE id = ?2",
            args![FORGOTTEN, id],
        )?;
        Ok(())
    }

    /// Each set of labels some worker ever registered with, once.
    pub fn worker_label_sets(&self) -> sql::Result<Vec<Labels>> {
        let sets: Vec<String> = self.conn.query_map("SELECT DISTINCT labels FROM workers", args![], |r| r.get(0))?;
        Ok(sets.iter().map(|s| Labels::read(s)).collect())
    }

    /// The most memory a live worker seen within `since` seconds offers
    /// (None: no worker said).
    pub fn largest_device(&self, since: f64) -> sql::Result<Option<u64>> {
        let m: Option<i64> = self.conn.query_row(
            "SELECT MAX(memory_bytes) FROM workers WHERE quarantined = 0 AND ended = '' AND last_seen >= ?1 AND memory_bytes > 0",
            args![now() - since],
            |r| r.get(0),
        )?;
        Ok(m.map(|m| m as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::WorkerState as W;

    #[test]
    fn a_workers_state_is_how_it_ended_then_quarantine_then_silence() {
        let lease = 30.0;
        let table = [
            ("", false, 1.0, W::Online),
            ("", false, 30.0, W::Online),
            ("", false, 30.5, W::Lost),
            ("", true, 1.0, W::Quarantined),
            ("", true, 1e6, W::Quarantined),
            (STOPPED, false, 1.0, W::Stopped),
            (STOPPED, true, 1e6, W::Stopped),
            (REPLACED, false, 1.0, W::Replaced),
            (FORGOTTEN, true, 1e6, W::Forgotten),
        ];
        for (ended, quarantined, silent, want) in table {
            assert_eq!(
                worker_state(ended, quarantined, silent, lease),
                want,
                "{ended:?} {quarantined} {silent}"
            );
        }
    }
}
