//! The schema of each backend and its migrations, run at start.
//!
//! SQLite's grew by migrations (a farm's file keeps its history);
//! PostgreSQL's starts as their sum, in its own types: 64-bit integers
//! everywhere (memory sizes, fencing tokens), ids in the "C" collation (so
//! a range of ids is a range of bytes: [`super::ids`]), and sequences for
//! the counters so coordinators never wait on one row. Several
//! coordinators starting at once migrate one at a time (an advisory lock).

use super::sql::{args, Conn, Result};

/// SQLite's migrations, applied in order; `PRAGMA user_version` says how
/// many ran.
const SQLITE: &[&str] = &[
    r#"
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
"#,
    // Contract v2: owners, idempotent submits, failure accounting by cause,
    // quarantine, memory-aware placement.
    r#"
ALTER TABLE collections ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE collections ADD COLUMN idempotency_key TEXT NOT NULL DEFAULT '';
CREATE UNIQUE INDEX collections_by_idempotency ON collections(owner, idempotency_key) WHERE idempotency_key != '';
CREATE INDEX collections_by_owner ON collections(owner, seq);
ALTER TABLE jobs ADD COLUMN requeues INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN min_memory INTEGER NOT NULL DEFAULT 0;
CREATE INDEX attempts_by_token ON attempts(job_id, fencing_token);
ALTER TABLE attempts ADD COLUMN resumed_from INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN strikes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN quarantined INTEGER NOT NULL DEFAULT 0;
"#,
    // Scale: the queue order lives on the job row, so Lease walks one
    // partial index instead of sorting a join; counts per collection and
    // the lease sweep read indexes too.
    r#"
ALTER TABLE jobs ADD COLUMN prio INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN cseq INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET prio = -(SELECT priority FROM collections c WHERE c.id = jobs.collection_id),
                cseq = (SELECT seq FROM collections c WHERE c.id = jobs.collection_id);
CREATE INDEX jobs_queue ON jobs(prio, cseq, seq) WHERE state = 1;
CREATE INDEX jobs_running ON jobs(lease_deadline) WHERE state = 2;
CREATE INDEX jobs_by_collection_state ON jobs(collection_id, state);
"#,
    // The dashboard: its farm page counts attempts that ended in the last
    // hour and day.
    r#"
CREATE INDEX attempts_by_end ON attempts(ended) WHERE ended IS NOT NULL;
"#,
    // Limits: a collection's variants and columns are stored once, not on
    // every job (new jobs leave params_json and style_key empty); a
    // worker's strikes remember their jobs, and a quarantine says why.
    r#"
CREATE TABLE variants (
    collection_id TEXT NOT NULL, variant_index INTEGER NOT NULL, params_json TEXT NOT NULL,
    PRIMARY KEY (collection_id, variant_index)
);
CREATE TABLE columns (
    collection_id TEXT NOT NULL, style_index INTEGER NOT NULL, style_keys TEXT NOT NULL,
    PRIMARY KEY (collection_id, style_index)
);
ALTER TABLE workers ADD COLUMN strike_jobs TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN quarantine_reason TEXT NOT NULL DEFAULT '';
CREATE INDEX jobs_held ON jobs(worker) WHERE state = 2;
"#,
    // The truth after faults: a worker's row says how it ended ('',
    // 'stopped', 'replaced', 'forgotten') and whether it drains; a
    // collection may ask to be announced when it ends.
    r#"
ALTER TABLE workers ADD COLUMN ended TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
CREATE INDEX workers_by_name ON workers(name) WHERE ended IN ('', 'stopped');
ALTER TABLE collections ADD COLUMN notify_url TEXT NOT NULL DEFAULT '';
ALTER TABLE collections ADD COLUMN notified INTEGER NOT NULL DEFAULT 0;
CREATE INDEX collections_to_notify ON collections(seq) WHERE notify_url != '' AND notified = 0;
"#,
    // Deleting: a collection being deleted is marked (when: deleting > 0)
    // and hidden before its objects go, so a coordinator killed half-way
    // finishes the delete when it starts again; the row stays as a
    // tombstone (deleted = 1), so a repeated delete is answered OK. Inputs
    // are found by key to tell which another collection still uses.
    r#"
ALTER TABLE collections ADD COLUMN deleting REAL NOT NULL DEFAULT 0;
ALTER TABLE collections ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
CREATE INDEX collections_being_deleted ON collections(deleting) WHERE deleting > 0 AND deleted = 0;
CREATE INDEX jobs_by_content_key ON jobs(content_key);
"#,
    // Notifications claimed in the database: one delivery id per ending,
    // kept across coordinators and restarts; tries and the next one
    // scheduled here, so no slot is held while a delivery waits. And
    // paused collections.
    r#"
ALTER TABLE collections ADD COLUMN notify_delivery TEXT NOT NULL DEFAULT '';
ALTER TABLE collections ADD COLUMN notify_tries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE collections ADD COLUMN notify_next REAL NOT NULL DEFAULT 0;
ALTER TABLE collections ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
"#,
    // Names that stay: a job and an attempt keep the name of the worker
    // that held the lease beside its registration id. Bytes stored: each
    // collection's folder and inputs as last measured, and each input
    // once (what "in all" adds).
    r#"
ALTER TABLE jobs ADD COLUMN worker_name TEXT NOT NULL DEFAULT '';
ALTER TABLE attempts ADD COLUMN worker_name TEXT NOT NULL DEFAULT '';
UPDATE jobs SET worker_name = COALESCE((SELECT name FROM workers w WHERE w.id = jobs.worker), '') WHERE worker != '';
UPDATE attempts SET worker_name = COALESCE((SELECT name FROM workers w WHERE w.id = attempts.worker), '');
ALTER TABLE collections ADD COLUMN folder_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE collections ADD COLUMN input_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE collections ADD COLUMN measured REAL NOT NULL DEFAULT 0;
CREATE INDEX collections_unmeasured ON collections(seq) WHERE measured = 0 AND deleting = 0;
CREATE TABLE stored_inputs (key TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
"#,
    // Fair shares: each job carries its collection's owner, and the queue
    // is also walked per owner (whose turn it is comes first); running
    // jobs are counted per owner from an index alone.
    r#"
ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
UPDATE jobs SET owner = COALESCE((SELECT owner FROM collections c WHERE c.id = jobs.collection_id), '');
CREATE INDEX jobs_fair ON jobs(owner, prio, cseq, seq) WHERE state = 1;
CREATE INDEX jobs_running_by_owner ON jobs(owner) WHERE state = 2;
"#,
    // Preemption: when a job was last asked to give its worker back, and
    // why (its attempt then ends "released (why)"). Pools: the labels a
    // worker has and a collection's jobs require (written forms, see
    // `stylefarm_proto::labels`); the requirements queued, walked one at
    // a time from an index.
    r#"
ALTER TABLE jobs ADD COLUMN preempted REAL NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN preempted_why TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN require_labels TEXT NOT NULL DEFAULT '';
ALTER TABLE collections ADD COLUMN require_labels TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN labels TEXT NOT NULL DEFAULT '';
CREATE INDEX jobs_by_requirement ON jobs(require_labels) WHERE state = 1;
"#,
];

/// PostgreSQL's migrations; the table `schema_version` says how many ran.
const POSTGRES: &[&str] = &[r#"
CREATE TABLE collections (
    id TEXT COLLATE "C" PRIMARY KEY, name TEXT NOT NULL, priority BIGINT NOT NULL, created DOUBLE PRECISION NOT NULL,
    contents BIGINT NOT NULL, styles BIGINT NOT NULL, variants BIGINT NOT NULL, seq BIGINT NOT NULL,
    owner TEXT NOT NULL DEFAULT '', idempotency_key TEXT NOT NULL DEFAULT '',
    notify_url TEXT NOT NULL DEFAULT '', notified BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX collections_by_idempotency ON collections(owner, idempotency_key) WHERE idempotency_key != '';
CREATE INDEX collections_by_owner ON collections(owner, seq);
CREATE INDEX collections_by_seq ON collections(seq);
CREATE INDEX collections_to_notify ON collections(seq) WHERE notify_url != '' AND notified = 0;
CREATE TABLE jobs (
    id TEXT COLLATE "C" PRIMARY KEY, collection_id TEXT COLLATE "C" NOT NULL REFERENCES collections(id), seq BIGINT NOT NULL,
    content_index BIGINT NOT NULL, style_index BIGINT NOT NULL, variant_index BIGINT NOT NULL,
    content_name TEXT NOT NULL, style_name TEXT NOT NULL, content_key TEXT NOT NULL, style_key TEXT NOT NULL,
    params_json TEXT NOT NULL, width BIGINT NOT NULL, height BIGINT NOT NULL,
    checkpoint_every BIGINT NOT NULL, snapshot_every BIGINT NOT NULL,
    state BIGINT NOT NULL, attempts BIGINT NOT NULL DEFAULT 0, failures BIGINT NOT NULL DEFAULT 0,
    not_before DOUBLE PRECISION NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '', output_key TEXT NOT NULL DEFAULT '',
    worker TEXT COLLATE "C" NOT NULL DEFAULT '', fencing_token BIGINT NOT NULL DEFAULT 0, lease_deadline DOUBLE PRECISION NOT NULL DEFAULT 0,
    resume_key TEXT NOT NULL DEFAULT '', resume_iteration BIGINT NOT NULL DEFAULT 0, started_from BIGINT NOT NULL DEFAULT 0,
    iteration BIGINT NOT NULL DEFAULT 0, iterations BIGINT NOT NULL DEFAULT 0,
    content DOUBLE PRECISION NOT NULL DEFAULT 0, style DOUBLE PRECISION NOT NULL DEFAULT 0, tv DOUBLE PRECISION NOT NULL DEFAULT 0,
    total DOUBLE PRECISION NOT NULL DEFAULT 0, eta DOUBLE PRECISION NOT NULL DEFAULT 0,
    requeues BIGINT NOT NULL DEFAULT 0, min_memory BIGINT NOT NULL DEFAULT 0,
    prio BIGINT NOT NULL DEFAULT 0, cseq BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_collection ON jobs(collection_id, seq);
CREATE INDEX jobs_queue ON jobs(prio, cseq, seq) WHERE state = 1;
CREATE INDEX jobs_running ON jobs(lease_deadline) WHERE state = 2;
CREATE INDEX jobs_by_collection_state ON jobs(collection_id, state);
CREATE INDEX jobs_held ON jobs(worker) WHERE state = 2;
CREATE TABLE attempts (
    job_id TEXT COLLATE "C" NOT NULL, attempt BIGINT NOT NULL, worker TEXT COLLATE "C" NOT NULL, fencing_token BIGINT NOT NULL,
    started DOUBLE PRECISION NOT NULL, ended DOUBLE PRECISION, outcome TEXT, resumed_from BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX attempts_by_token ON attempts(job_id, fencing_token);
CREATE INDEX attempts_by_end ON attempts(ended) WHERE ended IS NOT NULL;
CREATE TABLE workers (
    rowid BIGSERIAL UNIQUE, id TEXT COLLATE "C" PRIMARY KEY, name TEXT NOT NULL, device TEXT NOT NULL, device_name TEXT NOT NULL,
    memory_bytes BIGINT NOT NULL, registered DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL,
    strikes BIGINT NOT NULL DEFAULT 0, quarantined BIGINT NOT NULL DEFAULT 0, strike_jobs TEXT NOT NULL DEFAULT '',
    quarantine_reason TEXT NOT NULL DEFAULT '', ended TEXT NOT NULL DEFAULT '', draining BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX workers_by_name ON workers(name) WHERE ended IN ('', 'stopped');
CREATE TABLE variants (
    collection_id TEXT COLLATE "C" NOT NULL, variant_index BIGINT NOT NULL, params_json TEXT NOT NULL,
    PRIMARY KEY (collection_id, variant_index)
);
CREATE TABLE columns (
    collection_id TEXT COLLATE "C" NOT NULL, style_index BIGINT NOT NULL, style_keys TEXT NOT NULL,
    PRIMARY KEY (collection_id, style_index)
);
CREATE SEQUENCE seq;
CREATE SEQUENCE fencing_token;
"#,
    // As SQLite's sixth: deleting collections.
    r#"
ALTER TABLE collections ADD COLUMN deleting DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE collections ADD COLUMN deleted BIGINT NOT NULL DEFAULT 0;
CREATE INDEX collections_being_deleted ON collections(deleting) WHERE deleting > 0 AND deleted = 0;
CREATE INDEX jobs_by_content_key ON jobs(content_key);
"#,
    // The coordinators sharing the database, as each last swept leases:
    // a restarted or stalled one grants no grace while others served.
    r#"
CREATE TABLE coordinators (id TEXT COLLATE "C" PRIMARY KEY, seen DOUBLE PRECISION NOT NULL);
"#,
    // As SQLite's seventh: notifications claimed in the database, paused
    // collections.
    r#"
ALTER TABLE collections ADD COLUMN notify_delivery TEXT NOT NULL DEFAULT '';
ALTER TABLE collections ADD COLUMN notify_tries BIGINT NOT NULL DEFAULT 0;
ALTER TABLE collections ADD COLUMN notify_next DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE collections ADD COLUMN paused BIGINT NOT NULL DEFAULT 0;
"#,
    // As SQLite's eighth: workers' names on jobs and attempts, bytes
    // stored.
    r#"
ALTER TABLE jobs ADD COLUMN worker_name TEXT NOT NULL DEFAULT '';
ALTER TABLE attempts ADD COLUMN worker_name TEXT NOT NULL DEFAULT '';
UPDATE jobs SET worker_name = COALESCE((SELECT name FROM workers w WHERE w.id = jobs.worker), '') WHERE worker != '';
UPDATE attempts SET worker_name = COALESCE((SELECT name FROM workers w WHERE w.id = attempts.worker), '');
ALTER TABLE collections ADD COLUMN folder_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE collections ADD COLUMN input_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE collections ADD COLUMN measured DOUBLE PRECISION NOT NULL DEFAULT 0;
CREATE INDEX collections_unmeasured ON collections(seq) WHERE measured = 0 AND deleting = 0;
CREATE TABLE stored_inputs (key TEXT COLLATE "C" PRIMARY KEY, bytes BIGINT NOT NULL);
"#,
    // As SQLite's ninth: fair shares.
    r#"
ALTER TABLE jobs ADD COLUMN owner TEXT COLLATE "C" NOT NULL DEFAULT '';
UPDATE jobs SET owner = COALESCE((SELECT owner FROM collections c WHERE c.id = jobs.collection_id), '');
CREATE INDEX jobs_fair ON jobs(owner, prio, cseq, seq) WHERE state = 1;
CREATE INDEX jobs_running_by_owner ON jobs(owner) WHERE state = 2;
"#,
    // As SQLite's tenth: preemption, pools.
    r#"
ALTER TABLE jobs ADD COLUMN preempted DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN preempted_why TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN require_labels TEXT COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE collections ADD COLUMN require_labels TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN labels TEXT NOT NULL DEFAULT '';
CREATE INDEX jobs_by_requirement ON jobs(require_labels) WHERE state = 1;
"#,
];

/// An arbitrary key for the advisory lock migrations take.
const MIGRATION_LOCK: i64 = 0x5354_594c_4546_4152;

/// Runs the migrations `conn`'s database has not had.
pub fn migrate(conn: &Conn) -> Result<()> {
    match conn.as_sqlite() {
        Some(c) => {
            let version: usize = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
            for (i, sql) in SQLITE.iter().enumerate().skip(version) {
                c.execute_batch("BEGIN IMMEDIATE")?;
                let ran = c.execute_batch(sql).and_then(|()| c.pragma_update(None, "user_version", i + 1));
                match ran {
                    Ok(()) => c.execute_batch("COMMIT")?,
                    Err(e) => {
                        let _ = c.execute_batch("ROLLBACK");
                        return Err(e.into());
                    }
                }
            }
            Ok(())
        }
        None => {
            let tx = conn.savepoint()?;
            tx.query_row("SELECT pg_advisory_xact_lock(?1)::text", args![MIGRATION_LOCK], |_| Ok(()))?;
            tx.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
            let version: Option<i64> = tx.query_row("SELECT MAX(version) FROM schema_version", args![], |r| r.get(0))?;
            for (i, sql) in POSTGRES.iter().enumerate().skip(version.unwrap_or(0) as usize) {
                tx.batch(sql)?;
                tx.execute("INSERT INTO schema_version (version) VALUES (?1)", args![i as i64 + 1])?;
            }
            tx.commit()
        }
    }
}

/// The tables a farm's state is in, parents first (what `migrate` copies).
pub const TABLES: &[&str] = &["collections", "variants", "columns", "jobs", "attempts", "workers", "stored_inputs"];
