//! What a collection's end notification reads and writes: which
//! collections asked to be announced and have ended since, the claim of
//! one try (by one coordinator, under one delivery id for all tries), the
//! summary sent, and how each try ended. A retry of one of its jobs clears
//! it all ([`Db::act_on_job`]), so a collection that ends again is
//! announced again, as a new delivery.

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
    /// Its variant's label, as the collection's columns carry it.
    pub variant: String,
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

/// A notification this coordinator may send now: claimed in the database
/// until `until`, under a delivery id that every try of it shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub delivery: String,
    /// Tries made before this one.
    pub tries: u32,
}

/// How a try of a notification ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tried {
    /// Delivered, refused for good, or given up: not sent again (until a
    /// retry re-opens the collection).
    Done,
    /// Try again at this time (the farm's clock).
    Again(f64),
}

/// The condition "every job of collection ?1 has ended".
const ENDED: &str = "NOT EXISTS (SELECT 1 FROM jobs j WHERE j.collection_id = ?1 AND j.state IN (?2, ?3))";

impl Db {
    /// Up to `limit` collections, with their owners and notify URLs, whose notification is
    /// due at `now`: asked for, not yet sent since they last ended, not
    /// claimed or waiting for a later try, and ended (no job queued or
    /// running).
    pub fn collections_to_notify(&self, now: f64, limit: u32) -> sql::Result<Vec<(String, String, String)>> {
        self.conn.query_map(
            "SELECT c.id, c.owner, c.notify_url FROM collections c INDEXED BY collections_to_notify
             WHERE c.notify_url != '' AND c.notified = 0 AND c.deleting = 0 AND c.notify_next <= ?3
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.collection_id = c.id AND j.state IN (?1, ?2))
             ORDER BY c.seq LIMIT ?4",
            args![QUEUED, RUNNING, now, limit],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }

    /// Claims collection `id`'s notification for one try until `until`:
    /// one coordinator wins, the others (and this one again) find it
    /// claimed. The delivery id is made at the first claim (`fresh`) and
    /// kept until the notification is done. None: not due, or claimed.
    pub fn claim_notification(&mut self, id: &str, now: f64, until: f64, fresh: &str) -> sql::Result<Option<Claim>> {
        let claimed = self.conn.execute(
            &format!(
                "UPDATE collections SET notify_next = ?4, notify_delivery = CASE WHEN notify_delivery = '' THEN ?5 ELSE notify_delivery END
                 WHERE id = ?1 AND notify_url != '' AND notified = 0 AND deleting = 0 AND notify_next <= ?6 AND {ENDED}"
            ),
            args![id, QUEUED, RUNNING, until, fresh, now],
        )?;
        if claimed == 0 {
            return Ok(None);
        }
        self.conn
            .query_row("SELECT notify_delivery, notify_tries FROM collections WHERE id = ?1", args![id], |r| Ok(Claim { delivery: r.get(0)?, tries: r.get(1)? }))
            .optional()
    }

    /// Records how a try of delivery `delivery` ended — unless the
    /// collection was re-opened meanwhile (a retry: its next end is a new
    /// delivery). True if recorded.
    pub fn notification_tried(&mut self, id: &str, delivery: &str, tried: Tried) -> sql::Result<bool> {
        let n = match tried {
            Tried::Done => self.conn.execute(
                "UPDATE collections SET notified = 1, notify_delivery = '', notify_tries = 0, notify_next = 0 WHERE id = ?1 AND notify_delivery = ?2",
                args![id, delivery],
            )?,
            Tried::Again(at) => self.conn.execute(
                "UPDATE collections SET notify_tries = notify_tries + 1, notify_next = ?3 WHERE id = ?1 AND notify_delivery = ?2",
                args![id, delivery, at],
            )?,
        };
        Ok(n > 0)
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
                    variant: String::new(),
                    attempts: r.get(4)?,
                    error: r.get(5)?,
                })
            },
        )?;
        let mut failures = failures;
        if !failures.is_empty() {
            let columns = self.grid_columns(id)?;
            for f in &mut failures {
                f.variant = columns.iter().find(|c| c.variant_index == f.variant_index).map(|c| c.label.clone()).unwrap_or_default();
            }
        }
        Ok(Some(Ended {
            collection,
            notify_url: notify_url.unwrap_or_default(),
            failures,
        }))
    }
}
