//! Deleting a collection, in steps that survive a crash between them:
//! [`Db::mark_deleted`] hides it and records when (one transaction);
//! the coordinator then removes its objects from storage, the inputs no
//! other collection uses, and finally [`Db::forget_collection`] its rows,
//! leaving a tombstone so a repeated delete is answered OK. A coordinator
//! that starts again finds what was marked and not finished
//! ([`Db::deletions_due`]) and goes on.

use stylefarm_proto as pb;

use super::sql::{args, Optional};
use super::{now, CallError, Db, QUEUED, RUNNING};

/// What [`Db::mark_deleted`] found.
#[derive(Debug, PartialEq)]
pub enum Marked {
    /// Hidden now (or already being deleted), since this time (unix
    /// seconds): its objects are to go.
    Deleting(f64),
    /// Deleted before: nothing to do.
    AlreadyDeleted,
}

impl Db {
    /// Hides collection `id` and marks it for deletion. A collection with
    /// queued or running jobs is refused unless `cancel`, which cancels
    /// them first (a running one's worker stops at its next heartbeat).
    /// NotFound when there is no such collection at all.
    pub fn mark_deleted(&mut self, id: &str, cancel: bool) -> Result<Marked, CallError> {
        let row: Option<(f64, i64)> = self.conn.query_row("SELECT deleting, deleted FROM collections WHERE id = ?1 FOR UPDATE", args![id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        match row {
            None => return Err(CallError::NoCollection(id.to_string())),
            Some((_, 1)) => return Ok(Marked::AlreadyDeleted),
            Some((since, _)) if since > 0.0 => return Ok(Marked::Deleting(since)),
            Some(_) => {}
        }
        let (queued, running): (i64, i64) = self.conn.query_row(
            "SELECT COALESCE(SUM(CASE WHEN state = ?2 THEN 1 ELSE 0 END), 0), COALESCE(SUM(CASE WHEN state = ?3 THEN 1 ELSE 0 END), 0)
             FROM jobs INDEXED BY jobs_by_collection_state WHERE collection_id = ?1",
            args![id, QUEUED, RUNNING],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if queued + running > 0 {
            if !cancel {
                return Err(CallError::Unfinished { collection: id.to_string(), queued: queued as u64, running: running as u64 });
            }
            self.cancel(id)?;
        }
        let since = now();
        self.conn.execute("UPDATE collections SET deleting = ?1 WHERE id = ?2", args![since, id])?;
        Ok(Marked::Deleting(since))
    }

    /// Up to `limit` collections that have ended (no job queued or running)
    /// and whose last attempt ended (or which were created, if none ran)
    /// before `before` (unix seconds): what retention deletes.
    pub fn ended_before(&self, before: f64, limit: u32) -> super::sql::Result<Vec<String>> {
        self.conn.query_map(
            "SELECT c.id FROM collections c
             WHERE c.deleting = 0 AND c.created < ?1
               AND NOT EXISTS (SELECT 1 FROM jobs j INDEXED BY jobs_by_collection_state WHERE j.collection_id = c.id AND j.state IN (?2, ?3))
               AND COALESCE((SELECT MAX(a.ended) FROM jobs j JOIN attempts a ON a.job_id = j.id WHERE j.collection_id = c.id), c.created) < ?1
             ORDER BY c.seq LIMIT ?4",
            args![before, QUEUED, RUNNING, limit],
            |r| r.get(0),
        )
    }

    /// Collections marked for deletion and not finished, with when they
    /// were marked: what a (re)started coordinator finishes.
    pub fn deletions_due(&self) -> super::sql::Result<Vec<(String, f64)>> {
        self.conn.query_map(
            "SELECT id, deleting FROM collections INDEXED BY collections_being_deleted WHERE deleting > 0 AND deleted = 0 ORDER BY deleting",
            args![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// The input keys collection `id` reads that no other collection
    /// (being deleted or not) reads: those its delete may remove.
    pub fn inputs_only_of(&self, id: &str) -> super::sql::Result<Vec<String>> {
        let keys = self.inputs_of(id)?;
        let mut only = Vec::new();
        for key in keys {
            let elsewhere: bool = self.conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_by_content_key WHERE content_key = ?1 AND collection_id != ?2)
                     OR EXISTS (SELECT 1 FROM columns WHERE collection_id != ?2 AND instr(style_keys, ?1) > 0)
                     OR EXISTS (SELECT 1 FROM jobs WHERE style_key != '' AND collection_id != ?2 AND instr(style_key, ?1) > 0)",
                args![key, id],
                |r| r.get(0),
            )?;
            if !elsewhere {
                only.push(key);
            }
        }
        Ok(only)
    }

    /// Whether a worker may still write into collection `id`'s folder: a
    /// job cancelled while it ran whose lease has not lapsed (its worker
    /// stops at its next heartbeat).
    pub fn writers_may_remain(&self, id: &str) -> super::sql::Result<bool> {
        self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE collection_id = ?1 AND state = ?2 AND lease_deadline > ?3)",
            args![id, pb::JobState::Cancelled as i32, now()],
            |r| r.get(0),
        )
    }

    /// The last step: the collection's jobs, attempts, variants and columns
    /// go; its row stays as a tombstone (deleted = 1).
    pub fn forget_collection(&mut self, id: &str) -> super::sql::Result<()> {
        let tx = self.conn.savepoint()?;
        tx.execute("DELETE FROM attempts WHERE job_id IN (SELECT id FROM jobs WHERE collection_id = ?1)", args![id])?;
        tx.execute("DELETE FROM jobs WHERE collection_id = ?1", args![id])?;
        tx.execute("DELETE FROM variants WHERE collection_id = ?1", args![id])?;
        tx.execute("DELETE FROM columns WHERE collection_id = ?1", args![id])?;
        tx.execute("UPDATE collections SET deleted = 1, folder_bytes = 0, input_bytes = 0 WHERE id = ?1", args![id])?;
        tx.commit()
    }
}
