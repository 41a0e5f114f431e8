//! What a collection's end notification reads and writes: which
//! collections asked to be announced and have ended since, the summary
//! sent, and the mark that it was sent. A retry of one of its jobs clears
//! the mark ([`Db::act_on_job`]), so a collection that ends again is
//! announced again.

use super::sql::{self, args, Optional};
use stylefarm_proto as pb;

use super::{Db, FAILED, QUEUED, RUNNING};

/// Failures a notification lists; the rest are counted.
pub const MAX_FAILURES_LISTED: u32 = 100;

/// A job that failed, as a notification lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    pub job_id: String,
    pub content: String,
    pub style: String,
    pub variant_index: u32,
    pub attempts: u32,
    /// Why, as the job page shows it.
    pub error: String,
}

/// A collection that ended, as its notification tells it.
#[derive(Debug, Clone)]
pub struct Ended {
    pub collection: pb::Collection,
    pub notify_url: String,
    /// The first [`MAX_FAILURES_LISTED`] failed jobs, in submission order.
    pub failures: Vec<Failure>,
}

impl Db {
    /// Collections with a notify_url that have not been announced since
    /// they last ended, and have ended (no job queued or running).
    pub fn collections_to_notify(&self) -> sql::Result<Vec<String>> {
        self.conn.query_map(
            "SELECT c.id FROM collections c INDEXED BY collections_to_notify
             WHERE c.notify_url != '' AND c.notified = 0 AND c.deleting = 0
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.collection_id = c.id AND j.state IN (?1, ?2))",
            args![QUEUED, RUNNING],
            |r| r.get(0),
        )
    }

    /// What the notification of collection `id` says (None: no such
    /// collection).
    pub fn ended_collection(&self, id: &str) -> sql::Result<Option<Ended>> {
        let Some((_, mut collection)) = self.collection_header(id)? else {
            return Ok(None);
        };
        collection.set_counts(self.job_counts(id)?);
        let notify_url: Option<String> = self
            .conn
            .query_row(
                "SELECT notify_url FROM collections WHERE id = ?1",
                args![id],
                |r| r.get(0),
            )
            .optional()?;
        let failures = self.conn.query_map(
            "SELECT id, content_name, style_name, variant_index, attempts, error FROM jobs INDEXED BY jobs_by_collection_state
             WHERE collection_id = ?1 AND state = ?2 ORDER BY seq LIMIT ?3",
            args![id, FAILED, MAX_FAILURES_LISTED],
            |r| {
                Ok(Failure {
                    job_id: r.get(0)?,
                    content: r.get(1)?,
                    style: r.get(2)?,
                    variant_index: r.get(3)?,
                    attempts: r.get(4)?,
                    error: r.get(5)?,
                })
            },
        )?;
        Ok(Some(Ended {
            collection,
            notify_url: notify_url.unwrap_or_default(),
            failures,
        }))
    }

    /// Marks collection `id` announced (delivered, or given up on) — unless
    /// a retry re-opened it meanwhile: then it is announced when it ends
    /// again.
    pub fn mark_notified(&mut self, id: &str) -> sql::Result<bool> {
        let n = self.conn.execute(
            "UPDATE collections SET notified = 1
             WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.collection_id = ?1 AND j.state IN (?2, ?3))",
            args![id, QUEUED, RUNNING],
        )?;
        Ok(n > 0)
    }
}
