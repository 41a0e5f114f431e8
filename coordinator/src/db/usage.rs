//! Bytes stored, as the usage sweep (`crate::usage`) last measured them:
//! each collection's folder and the inputs it reads on its row, and each
//! input once in `stored_inputs`, so the farm's total counts a photo
//! shared by ten collections once. Which collections are due: those never
//! measured, those with a running job (checkpoints grow), and those whose
//! attempts ended since the last pass (outputs land, checkpoints go).

use super::sql::{self, args};
use super::{Db, STYLE_KEY_SEPARATOR};

impl Db {
    /// Up to `limit` collections to measure now: never measured, one of
    /// whose attempts ended at or after `ended_since`, or running and last
    /// measured before `running_before` (unix seconds).
    pub fn usage_due(&self, ended_since: f64, running_before: f64, limit: u32) -> sql::Result<Vec<String>> {
        let mut due: Vec<String> =
            self.conn
                .query_map("SELECT id FROM collections INDEXED BY collections_unmeasured WHERE measured = 0 AND deleting = 0 ORDER BY seq LIMIT ?1", args![limit], |r| r.get(0))?;
        let ended: Vec<String> = self.conn.query_map(
            "SELECT DISTINCT j.collection_id FROM attempts a INDEXED BY attempts_by_end JOIN jobs j ON j.id = a.job_id WHERE a.ended >= ?1",
            args![ended_since],
            |r| r.get(0),
        )?;
        let running: Vec<String> = self.conn.query_map(
            // The state as a literal, as the partial index's own condition.
            &format!(
                "SELECT DISTINCT j.collection_id FROM jobs j INDEXED BY jobs_running JOIN collections c ON c.id = j.collection_id
                 WHERE j.state = {} AND c.measured < ?1",
                super::RUNNING
            ),
            args![running_before],
            |r| r.get(0),
        )?;
        for id in ended.into_iter().chain(running) {
            if !due.contains(&id) {
                due.push(id);
            }
        }
        due.truncate(limit as usize);
        Ok(due)
    }

    /// Every input key collection `id` reads (its photos and paintings,
    /// blended ones split), sorted, each once.
    pub fn inputs_of(&self, id: &str) -> sql::Result<Vec<String>> {
        let mut keys: Vec<String> = self.conn.query_map("SELECT DISTINCT content_key FROM jobs WHERE collection_id = ?1", args![id], |r| r.get(0))?;
        let styles: Vec<String> = self.conn.query_map(
            "SELECT style_keys FROM columns WHERE collection_id = ?1 UNION SELECT style_key FROM jobs WHERE collection_id = ?1 AND style_key != ''",
            args![id],
            |r| r.get(0),
        )?;
        keys.extend(styles.iter().flat_map(|k| k.split(STYLE_KEY_SEPARATOR)).map(str::to_string));
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Records what collection `id` was measured to hold at `at`: its
    /// folder's bytes and each of its inputs (key, bytes) found in
    /// storage. A collection being deleted keeps what its delete left.
    pub fn record_usage(&mut self, id: &str, folder_bytes: u64, inputs: &[(String, u64)], at: f64) -> sql::Result<()> {
        let tx = self.conn.savepoint()?;
        let input_bytes: u64 = inputs.iter().map(|(_, b)| b).sum();
        tx.execute(
            "UPDATE collections SET folder_bytes = ?1, input_bytes = ?2, measured = ?3 WHERE id = ?4 AND deleting = 0",
            args![clamp(folder_bytes), clamp(input_bytes), at, id],
        )?;
        for (key, bytes) in inputs {
            tx.execute("INSERT INTO stored_inputs (key, bytes) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET bytes = excluded.bytes", args![key, clamp(*bytes)])?;
        }
        tx.commit()
    }

    /// Collection `id` changed in storage in a way the sweep cannot see
    /// from the database (a succeeded job's checkpoints went): measured
    /// again at the next pass.
    pub fn usage_stale(&mut self, id: &str) -> sql::Result<()> {
        // Asked at every attempt's end, by every coordinator: a row marked
        // already is not written again, and one another writer holds is
        // left to it (waiting for it deadlocked two coordinators'
        // groups under load, each holding the other's next row).
        self.conn
            .execute("UPDATE collections SET measured = 0 WHERE id = (SELECT id FROM collections WHERE id = ?1 AND measured != 0 FOR UPDATE SKIP LOCKED)", args![id])
            .map(|_| ())
    }

    /// An input the deleter removed from storage: no longer counted.
    pub fn forget_stored_input(&mut self, key: &str) -> sql::Result<()> {
        self.conn.execute("DELETE FROM stored_inputs WHERE key = ?1", args![key]).map(|_| ())
    }

    /// The farm's storage in all: every collection's folder (until its
    /// delete finishes) and each input once. (A sum is cast: PostgreSQL
    /// sums 64-bit integers as NUMERIC.)
    pub fn stored_bytes(&self) -> sql::Result<u64> {
        let folders: i64 = self.conn.query_row("SELECT CAST(COALESCE(SUM(folder_bytes), 0) AS BIGINT) FROM collections WHERE deleted = 0", args![], |r| r.get(0))?;
        let inputs: i64 = self.conn.query_row("SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM stored_inputs", args![], |r| r.get(0))?;
        Ok((folders + inputs).max(0) as u64)
    }

    /// Each owner's collections' folders and inputs (an input counted for
    /// every owner whose collections read it), for `/metrics`. Deleted
    /// collections count 0 (their bytes are zeroed), so an owner whose
    /// every collection went is listed at 0, not left at its last figure.
    pub fn stored_bytes_by_owner(&self) -> sql::Result<Vec<(String, u64)>> {
        self.conn.query_map(
            "SELECT owner, CAST(COALESCE(SUM(folder_bytes + input_bytes), 0) AS BIGINT) FROM collections GROUP BY owner ORDER BY owner",
            args![],
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)),
        )
    }
}

/// A byte count as the databases store it (a 64-bit signed integer).
fn clamp(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}
