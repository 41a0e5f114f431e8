//! The coordinator's state: collections, jobs, attempts, workers, in an
//! embedded SQLite file or a PostgreSQL database several coordinators
//! share. Every change is one transaction, so a coordinator killed at any
//! moment restarts with every accepted collection and job intact. Its
//! statements are written once, here and in the submodules, and run on
//! either backend through [`sql::Conn`]; what a worker's call does to a
//! job is decided by [`crate::machine::next`].
//!
//! - `leases`: a worker's lease and its calls under it.
//! - `collections`: what people submit, read and act on.
//! - `fleet`: the workers; `notify`: collections' end announcements.
//! - `schema`, [`copy`]: the tables, their migrations, and moving a farm
//!   from SQLite to PostgreSQL.

use sql::{args, Conn, Optional, Row};
pub use sql::Target;
use stylefarm_proto as pb;

use crate::machine::{Refusal, State};

mod collections;
mod deletion;
mod fleet;
mod leases;
pub mod ids;
mod notify;
mod preempt;
mod standing;
pub mod copy;
mod schema;
mod usage;
pub mod single;
pub mod sql;
pub mod testing;
pub use collections::{NewCollection, NewJob, NewParams};
pub use deletion::Marked;
pub use fleet::worker_state;
pub use leases::{Answer, Call, Leased};
pub use notify::{Claim, Ended, Failure, Tried};


/// A job's parameters and style keys: its own columns for jobs created
/// before they were stored once per collection, else its variant's and
/// its column's rows.
const JOB_PARAMS: &str = "COALESCE(NULLIF(params_json, ''),
    (SELECT v.params_json FROM variants v WHERE v.collection_id = jobs.collection_id AND v.variant_index = jobs.variant_index))";
const JOB_STYLE_KEYS: &str = "COALESCE(NULLIF(style_key, ''),
    (SELECT c.style_keys FROM columns c WHERE c.collection_id = jobs.collection_id AND c.style_index = jobs.style_index))";

/// The PostgreSQL channel job changes are announced on.
const CHANGES_CHANNEL: &str = "stylefarm_jobs";
/// The payload of a coordinator's ping on it (ids are UUIDs: never this).
const PING: &str = "ping";
/// Most bytes of job ids in one notification (the server takes 8000).
const NOTIFY_PAYLOAD: usize = 7000;

/// A sweep that starts this long after the one before found the
/// coordinator itself behind (its runtime or its state's thread stalled):
/// running leases get that time back.
const STALL_SECONDS: f64 = 2.0;

/// `jobs.prio` of a paused collection's jobs: past every priority a
/// collection may have (an `i32`), where the lease stops looking.
const PAUSED_PRIO: i64 = 1 << 40;

/// The farm at a glance (the dashboard's farm page).
#[derive(Debug, Clone, Default)]
pub struct FarmSummary {
    /// Attempts that succeeded in the last hour.
    pub done_last_hour: u64,
    /// Attempts that ended badly in the last day, by cause, most first.
    pub failures_last_day: Vec<(String, u64)>,
    /// Iterations per second of each worker's running job, by worker id.
    pub iterations_per_second: Vec<(String, f64)>,
}

/// The farm's time ([`crate::clock`]): on a shared database, its clock.
pub fn now() -> f64 {
    crate::clock::now()
}

/// The rules the database applies, from the coordinator's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub lease_seconds: f64,
    /// Own failures before a job is given up.
    pub max_failures: u32,
    /// Requeues through no fault of the job before it is given up.
    pub max_requeues: u32,
    /// Failed attempts in a row before a worker gets no more jobs.
    pub quarantine_after: u32,
}

/// Why a worker's call was refused.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no job {0}")]
    NoJob(String),
    #[error("no collection {0}")]
    NoCollection(String),
    #[error("collection {collection} has {queued} queued and {running} running jobs: cancel it first, or delete it with cancel (farmctl delete --cancel)")]
    Unfinished { collection: String, queued: u64, running: u64 },
    #[error("worker {0} is not registered; register first")]
    NotRegistered(String),
    #[error("worker {worker} is {how}; a worker that restarts registers again")]
    Gone { worker: String, how: String },
    /// A registration under the name of a worker that is still alive.
    #[error("a worker named {name} is still alive ({worker}, seen {seen:.1} s ago): names are unique; give this one another --name, or stop that one first (it counts as gone {lease:.0} s after its last call)")]
    NameTaken { name: String, worker: String, seen: f64, lease: f64 },
    /// An operator's action that the worker's state does not allow.
    #[error("worker {worker}: {why}")]
    Busy { worker: String, why: String },
    #[error("worker {worker} is quarantined after {strikes} failed attempts in a row; fix its device or storage and restart it")]
    Quarantined { worker: String, strikes: u32 },
    #[error("job {job}'s lease is held by another worker")]
    WrongWorker { job: String },
    #[error("stale lease: job {job} has no current lease under this fencing token{why}")]
    Stale { job: String, why: String },
    #[error("job {job}: {refusal}")]
    Refused { job: String, refusal: Refusal },
    /// What the worker reported cannot be true of the job.
    #[error("job {job}: {what}")]
    Invalid { job: String, what: String },
    /// A submit that would queue more of its user's jobs than allowed.
    #[error("at most {max} jobs may be queued per user (--max-queued); {queued} of yours are and this collection adds {adding}: wait for some to end, or cancel some")]
    OverQuota { queued: u64, adding: u64, max: u64 },
    /// What was asked for needs more memory than any registered device has.
    #[error("{0}")]
    WontFit(String),
    #[error("database: {0}")]
    Db(#[from] sql::Error),
}

/// Joins a blended job's style keys in the `style_key` column (keys are
/// `inputs/<sha256>`, so they never contain it).
const STYLE_KEY_SEPARATOR: &str = "\n";

pub struct Db {
    conn: Conn,
    /// Jobs changed since the last [`Db::take_touched`]: what the state's
    /// owner announces to watchers after a commit.
    touched: Vec<String>,
    /// When [`Db::expire_leases`] last ran, as `f64` bits (0: never),
    /// shared by the coordinator's writers (in memory: a restart grants
    /// its own grace).
    last_sweep: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// This coordinator, as the others see it in the `coordinators` table
    /// (PostgreSQL): a fresh id per process start.
    me: std::sync::Arc<str>,
}

/// A writer to be, sharing a coordinator's record of sweeps and its id.
pub struct WriterSeed {
    last_sweep: std::sync::Arc<std::sync::atomic::AtomicU64>,
    me: std::sync::Arc<str>,
}

impl WriterSeed {
    /// Connects (blocking), as [`Db::connect`].
    pub fn connect(self, target: &Target) -> sql::Result<Db> {
        Ok(Db { last_sweep: self.last_sweep, me: self.me, ..Db::connect(target)? })
    }
}

/// A new coordinator id.
fn coordinator_id() -> std::sync::Arc<str> {
    uuid::Uuid::new_v4().to_string().into()
}

fn state_of(v: i32) -> sql::Result<State> {
    State::from_wire(v).ok_or_else(|| sql::Error::Type(format!("no job state {v}")))
}

const QUEUED: i32 = pb::JobState::Queued as i32;
const RUNNING: i32 = pb::JobState::Running as i32;
const FAILED: i32 = pb::JobState::Failed as i32;

fn job_from_row(r: &Row) -> sql::Result<pb::Job> {
    Ok(pb::Job {
        job_id: r.get("id")?,
        collection_id: r.get("collection_id")?,
        content_index: r.get("content_index")?,
        style_index: r.get("style_index")?,
        variant_index: r.get("variant_index")?,
        content_name: r.get("content_name")?,
        style_name: r.get("style_name")?,
        state: r.get("state")?,
        attempts: r.get("attempts")?,
        progress: Some(pb::Progress {
            iteration: r.get("iteration")?,
            iterations: r.get("iterations")?,
            content: r.get("content")?,
            style: r.get("style")?,
            tv: r.get("tv")?,
            total: r.get("total")?,
            eta_seconds: r.get("eta")?,
        }),
        worker: r.get("worker")?,
        error: r.get("error")?,
        output_key: r.get("output_key")?,
        started_from: r.get("started_from")?,
        failures: r.get("failures")?,
        requeues: r.get("requeues")?,
        worker_name: r.get("worker_name")?,
    })
}

impl Db {
    /// Opens (creating if needed) the database and runs pending migrations.
    pub fn open(path: &std::path::Path) -> sql::Result<Self> {
        Self::connect(&Target::Sqlite(path.to_path_buf()))
    }

    /// Connects to the database `target` names (creating an SQLite file if
    /// needed) and runs pending migrations.
    pub fn connect(target: &Target) -> sql::Result<Self> {
        let conn = match target {
            Target::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path)?;
                conn.pragma_update(None, "journal_mode", "WAL")?;
                conn.pragma_update(None, "synchronous", "FULL")?;
                conn.pragma_update(None, "foreign_keys", "ON")?;
                Conn::sqlite(conn)
            }
            Target::Postgres(url) => Conn::postgres(url)?,
        };
        schema::migrate(&conn)?;
        Ok(Self { conn, touched: Vec::new(), last_sweep: Default::default(), me: coordinator_id() })
    }

    /// Another writing connection to this database for the same
    /// coordinator (PostgreSQL: its writers run side by side), sharing
    /// this one's record of sweeps.
    pub fn another_writer(&self, target: &Target) -> sql::Result<Self> {
        self.writer_seed().connect(target)
    }

    /// What [`Db::another_writer`] needs of this one, to connect later on
    /// another thread (connecting blocks).
    pub fn writer_seed(&self) -> WriterSeed {
        WriterSeed { last_sweep: self.last_sweep.clone(), me: self.me.clone() }
    }

    /// A connection for reads: for SQLite a read-only one, which sees
    /// every committed change and never blocks the writer (WAL).
    pub fn open_reader(target: &Target) -> sql::Result<Self> {
        let conn = match target {
            Target::Sqlite(path) => Conn::sqlite(rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?),
            Target::Postgres(url) => Conn::postgres(url)?,
        };
        Ok(Self { conn, touched: Vec::new(), last_sweep: Default::default(), me: coordinator_id() })
    }

    /// On a shared database, measures how far its clock is from this
    /// machine's and sets the farm's clock by it ([`crate::clock`]);
    /// returns the offset in seconds (0 on SQLite: its own clock).
    pub fn sync_clock(&self) -> sql::Result<f64> {
        if !self.is_shared() {
            return Ok(0.0);
        }
        let before = crate::clock::local();
        let database: f64 = self.conn.query_row("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8", args![], |r| r.get(0))?;
        let after = crate::clock::local();
        let offset = database - (before + after) / 2.0;
        crate::clock::set_offset(offset);
        Ok(offset)
    }

    /// When a coordinator other than this process (another one, or this
    /// one before a restart) last swept leases, in the farm's time: the
    /// farm served its workers until then. None on SQLite (one
    /// coordinator) or when none has been recorded.
    pub fn others_last_heard(&self) -> sql::Result<Option<f64>> {
        if !self.is_shared() {
            return Ok(None);
        }
        self.conn.query_row("SELECT MAX(seen) FROM coordinators WHERE id != ?1", args![&*self.me], |r| r.get(0))
    }

    /// Records that this coordinator is alive at `t` (PostgreSQL), and
    /// forgets coordinators unheard for an hour.
    fn heard(&self, t: f64) -> sql::Result<()> {
        if self.is_shared() {
            self.conn.execute(
                "INSERT INTO coordinators (id, seen) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET seen = EXCLUDED.seen",
                args![&*self.me, t],
            )?;
            self.conn.execute("DELETE FROM coordinators WHERE seen < ?1", args![t - 3600.0])?;
        }
        Ok(())
    }

    /// Whether this is PostgreSQL (where other coordinators may write too).
    pub fn is_shared(&self) -> bool {
        self.conn.is_postgres()
    }

    /// Opens one transaction that the next calls share until
    /// [`Db::commit`] (group commit: one fsync for all of them). Each call
    /// still runs in its own savepoint, so one that fails undoes only
    /// itself.
    pub fn begin(&mut self) -> sql::Result<()> {
        self.conn.begin()
    }

    /// Commits what [`Db::begin`] opened (on disk when this returns:
    /// SQLite's synchronous=FULL, PostgreSQL's synchronous_commit).
    pub fn commit(&mut self) -> sql::Result<()> {
        self.conn.commit()
    }

    /// Undoes what [`Db::begin`] opened, after a failed commit.
    pub fn rollback(&mut self) {
        self.conn.rollback();
        self.touched.clear();
    }

    /// Whether a job was changed since the last [`Db::take_touched`].
    pub fn touched_any(&self) -> bool {
        !self.touched.is_empty()
    }

    /// The jobs changed since the last call, each once.
    pub fn take_touched(&mut self) -> Vec<String> {
        let mut ids = std::mem::take(&mut self.touched);
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// On PostgreSQL, announces the jobs changed since the last call to
    /// every coordinator, inside the open transaction: `NOTIFY` is
    /// delivered at commit, in commit order, and not at all if the
    /// transaction rolls back. Payloads are job ids joined by commas,
    /// under the server's 8000-byte limit.
    pub fn notify_touched(&mut self) -> sql::Result<()> {
        let ids = self.take_touched();
        let mut payload = String::new();
        for id in ids.iter().map(String::as_str).chain([""]) {
            if (id.is_empty() && !payload.is_empty()) || payload.len() + id.len() + 1 > NOTIFY_PAYLOAD {
                self.conn.query_row("SELECT pg_notify(?1, ?2)::text", args![CHANGES_CHANNEL, payload], |_| Ok(()))?;
                payload.clear();
            }
            if !id.is_empty() {
                if !payload.is_empty() {
                    payload.push(',');
                }
                payload.push_str(id);
            }
        }
        Ok(())
    }

    /// LISTENs for other coordinators' changes ([`Db::notify_touched`]).
    pub fn listen_for_changes(&self) -> sql::Result<()> {
        self.conn.listen(CHANGES_CHANNEL)
    }

    /// The ids of jobs changed by commits announced within `wait`, and
    /// whether anything at all (a ping included) arrived.
    pub fn changed_jobs(&self, wait: std::time::Duration) -> sql::Result<(Vec<String>, bool)> {
        let payloads = self.conn.notifications(wait)?;
        let ids = payloads.iter().filter(|p| p.as_str() != PING).flat_map(|p| p.split(',')).filter(|id| !id.is_empty()).map(str::to_string).collect();
        Ok((ids, !payloads.is_empty()))
    }

    /// Announces a coordinator alive on the change channel (a payload no
    /// job id can be): every listener hears it.
    pub fn ping_listeners(&self) -> sql::Result<()> {
        self.conn.batch(&format!("NOTIFY {CHANGES_CHANNEL}, '{PING}'"))
    }

    /// A connection the database closed (PostgreSQL): open a new one.
    pub fn is_broken(&self) -> bool {
        self.conn.is_closed()
    }

    /// The rows of these jobs, for watchers.
    pub fn jobs_by_id(&self, ids: &[String]) -> sql::Result<Vec<pb::Job>> {
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(j) = self.conn.query_row("SELECT * FROM jobs WHERE id = ?1", args![id], job_from_row).optional()? {
                jobs.push(j);
            }
        }
        Ok(jobs)
    }

    /// The next value of a counter (`seq`, `fencing_token`): a row in
    /// SQLite (one writer), a sequence in PostgreSQL (no lock between
    /// coordinators).
    fn next(tx: &Conn, counter: &str) -> sql::Result<u64> {
        if tx.is_postgres() {
            return tx.query_row(&format!("SELECT nextval('{counter}')"), args![], |r| r.get(0));
        }
        tx.execute("UPDATE counters SET value = value + 1 WHERE name = ?1", args![counter])?;
        tx.query_row("SELECT value FROM counters WHERE name = ?1", args![counter], |r| r.get(0))
    }

    /// The coordinator just started: the time the farm was down costs no
    /// job anything. Where the coordinators' sweeps are recorded
    /// (PostgreSQL), running leases get back exactly the time since any
    /// coordinator last swept — nothing while another one served the
    /// workers, so a coordinator restarting again and again never keeps a
    /// dead worker's lease alive; otherwise a full lease length from now.
    pub fn grant_grace(&mut self, rules: &Rules) -> sql::Result<usize> {
        let t = now();
        let last = self.others_last_heard()?;
        self.heard(t)?;
        self.last_sweep.store(t.to_bits(), std::sync::atomic::Ordering::Relaxed);
        if let Some(last) = last {
            let down = t - last;
            if down <= STALL_SECONDS {
                return Ok(0);
            }
            return self.conn.execute(
                "UPDATE jobs SET lease_deadline = lease_deadline + ?1 WHERE id IN (SELECT id FROM jobs WHERE state = ?2 FOR UPDATE SKIP LOCKED)",
                args![down, RUNNING],
            );
        }
        // Rows another coordinator holds are skipped: it is alive and
        // serving those leases (waiting on its locks, in no set order,
        // deadlocked against it and stalled both for PostgreSQL's
        // deadlock_timeout, a second).
        self.conn.execute(
            "UPDATE jobs SET lease_deadline = GREATEST(lease_deadline, ?1) WHERE id IN (SELECT id FROM jobs WHERE state = ?2 FOR UPDATE SKIP LOCKED)",
            args![now() + rules.lease_seconds, RUNNING],
        )
    }
}

pub fn backoff(failures: u32) -> f64 {
    (2f64.powi(failures.saturating_sub(1) as i32)).min(30.0)
}

#[cfg(test)]
mod tests;
