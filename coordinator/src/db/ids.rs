//! Ids by their first characters, as git takes a commit's: the dashboard
//! opens `#/j/3f2a9c1e` as it opens the whole id, when exactly one job or
//! collection the caller may see starts so.

use super::sql::{self, args};

use super::Db;

/// What kind of thing an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Collection,
    Job,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Collection => "collection",
            Kind::Job => "job",
        }
    }
}

/// A match: its kind, its whole id and its owner.
pub type Found = (Kind, String, String);

impl Db {
    /// Up to `limit` collections and up to `limit` jobs whose ids start
    /// with `prefix`, with their owners (the caller filters what it may
    /// see). Ids are ASCII below DEL, so the range `[prefix, prefix + DEL)`
    /// holds exactly those that start with it, and each table's primary
    /// key answers it.
    pub fn ids_starting(&self, prefix: &str, limit: u32) -> sql::Result<Vec<Found>> {
        let end = format!("{prefix}\u{7f}");
        let mut found = Vec::new();
        found.extend(self.conn.query_map(
            "SELECT id, owner FROM collections WHERE id >= ?1 AND id < ?2 AND deleting = 0 ORDER BY id LIMIT ?3",
            args![prefix, end, limit],
            |r| Ok((Kind::Collection, r.get(0)?, r.get(1)?)),
        )?);
        found.extend(self.conn.query_map(
            "SELECT j.id, c.owner FROM jobs j JOIN collections c ON c.id = j.collection_id WHERE j.id >= ?1 AND j.id < ?2 AND c.deleting = 0 ORDER BY j.id LIMIT ?3",
            args![prefix, end, limit],
            |r| Ok((Kind::Job, r.get(0)?, r.get(1)?)),
        )?);
        Ok(found)
    }
}
