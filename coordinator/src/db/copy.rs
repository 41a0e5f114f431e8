//! `farm-coordinator migrate`: a farm's state copied from its SQLite file
//! into PostgreSQL, so a farm that outgrows one coordinator moves without
//! losing its history — collections, jobs, attempts, workers, and the
//! counters (so tokens and sequence numbers keep growing).

use super::schema::TABLES;
use super::sql::{self, args, Value};
use super::{Db, Target};

/// Why a copy did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}: {1}")]
    Open(String, sql::Error),
    #[error("{0} already holds a farm ({1} collections, {2} workers); migrate copies into an empty database only")]
    NotEmpty(String, i64, i64),
    #[error("copying {0}: {1}")]
    Table(&'static str, sql::Error),
    #[error("migrate copies from sqlite:PATH to postgres://…")]
    Direction,
    #[error("{0} is not a Stylefarm database (it has no collections, jobs and workers tables); nothing was copied or written")]
    NotAFarm(String),
}

/// Copies every table of `from` (SQLite) into `to` (PostgreSQL, empty) in
/// one transaction: all of it or nothing. Returns the rows copied per
/// table.
pub fn copy(from: &Target, to: &Target) -> Result<Vec<(&'static str, usize)>, CopyError> {
    let (Target::Sqlite(path), Target::Postgres(_)) = (from, to) else { return Err(CopyError::Direction) };
    if !path.exists() {
        return Err(CopyError::Open(from.describe(), sql::Error::Type("no such file".into())));
    }
    // Read only: the source is never written, not even migrated (a farm
    // of an older schema lacks newer columns, which take their defaults).
    let source = Db::open_reader(from).map_err(|e| CopyError::Open(from.describe(), e))?;
    let farm_tables: i64 = source
        .conn
        .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('collections', 'jobs', 'workers')", args![], |r| r.get(0))
        .map_err(|e| CopyError::Open(from.describe(), e))?;
    if farm_tables != 3 {
        return Err(CopyError::NotAFarm(from.describe()));
    }
    let target = Db::connect(to).map_err(|e| CopyError::Open(to.describe(), e))?;
    let count = |table: &str| target.conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), args![], |r| r.get::<_, i64>(0));
    let (collections, workers) = (count("collections"), count("workers"));
    let (collections, workers) = (collections.map_err(|e| CopyError::Open(to.describe(), e))?, workers.map_err(|e| CopyError::Open(to.describe(), e))?);
    if collections + workers > 0 {
        return Err(CopyError::NotEmpty(to.describe(), collections, workers));
    }
    let tx = target.conn.savepoint().map_err(|e| CopyError::Open(to.describe(), e))?;
    let mut copied = Vec::new();
    for &table in TABLES {
        // A worker's rowid orders the workers' list: it travels too.
        let select = if table == "workers" { "SELECT rowid AS rowid, * FROM workers".to_string() } else { format!("SELECT * FROM {table}") };
        let rows = source.conn.query_map(&select, args![], |r| r.values()).map_err(|e| CopyError::Table(table, e))?;
        for row in &rows {
            let names: Vec<&str> = row.iter().map(|(n, _)| n.as_str()).collect();
            let marks: Vec<String> = (1..=row.len()).map(|i| format!("?{i}")).collect();
            let insert = format!("INSERT INTO {table} ({}) VALUES ({})", names.join(", "), marks.join(", "));
            let values: Vec<Value> = row.iter().map(|(_, v)| v.clone()).collect();
            tx.execute(&insert, &values).map_err(|e| CopyError::Table(table, e))?;
        }
        copied.push((table, rows.len()));
    }
    // The counters: PostgreSQL's sequences go on from where SQLite's rows were.
    let counters = source.conn.query_map("SELECT name, value FROM counters", args![], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)));
    for (name, value) in counters.map_err(|e| CopyError::Table("counters", e))? {
        if value > 0 && (name == "seq" || name == "fencing_token") {
            tx.query_row(&format!("SELECT setval('{name}', ?1)::text"), args![value], |_| Ok(())).map_err(|e| CopyError::Table("counters", e))?;
        }
    }
    tx.query_row("SELECT setval(pg_get_serial_sequence('workers', 'rowid'), GREATEST(COALESCE(MAX(rowid), 0), 1))::text FROM workers", args![], |_| Ok(()))
        .map_err(|e| CopyError::Table("workers", e))?;
    tx.commit().map_err(|e| CopyError::Table("commit", e))?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Call, NewCollection, NewJob, Rules};
    use crate::schedule::Policy;
    use stylefarm_proto as pb;

    const RULES: Rules = Rules { lease_seconds: 60.0, max_failures: 3, max_requeues: 10, quarantine_after: 3 };

    /// An empty file and another program's SQLite database are refused by
    /// name before the target is touched, and neither is written: migrate
    /// only reads its source (it used to create the farm's tables in it).
    #[test]
    fn a_source_that_is_not_a_farm_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        let foreign = dir.path().join("foreign.db");
        rusqlite::Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('mine');").unwrap();
        let before = std::fs::read(&foreign).unwrap();
        let nowhere = Target::Postgres("postgres://nobody@127.0.0.1:1/none".into());
        for path in [&empty, &foreign] {
            let e = copy(&Target::Sqlite(path.clone()), &nowhere).unwrap_err();
            assert!(matches!(e, CopyError::NotAFarm(_)) && e.to_string().contains("not a Stylefarm database"), "{e}");
        }
        assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0, "the empty file stays empty");
        assert_eq!(std::fs::read(&foreign).unwrap(), before, "the foreign database is unchanged");
        // A farm's file, its coordinator stopped (no -wal or -shm left),
        // opens read-only and passes: only the target fails here.
        let farm = dir.path().join("farm.db");
        drop(Db::open(&farm).unwrap());
        let e = copy(&Target::Sqlite(farm.clone()), &nowhere).unwrap_err();
        assert!(matches!(&e, CopyError::Open(what, _) if what.contains("postgres")), "{e}");
    }

    fn job(id: &str, i: u32) -> NewJob {
        NewJob { content_index: i, content_name: format!("c{i}"), ..crate::db::tests::job(id) }
    }

    /// A farm with history (a success, a running lease, a queued job, two
    /// workers) read the same after the copy, and its tokens and sequence
    /// numbers go on growing there.
    #[test]
    fn a_farm_copied_to_postgres_reads_the_same_and_its_counters_go_on() {
        let Some(pg) = crate::db::testing::Postgres::from_env() else {
            eprintln!("STYLEFARM_TEST_POSTGRES is not set: nothing to copy to");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let from = Target::Sqlite(dir.path().join("farm.db"));
        let mut db = Db::connect(&from).unwrap();
        let c = NewCollection {
            id: "c1".into(),
            owner: "u1".into(),
            idempotency_key: "k".into(),
            name: "n".into(),
            priority: 2,
            shape: (3, 1, 1),
            jobs: vec![job("a", 0), job("b", 1), job("q", 2)],
            notify_url: String::new(),
            max_queued: None,
            require: "pool=a".into(),
        };
        db.create_collection(&c).unwrap();
        for w in ["w1", "w2"] {
            db.register_worker(w, &pb::RegisterRequest { name: w.into(), device: "cpu".into(), memory_bytes: 8 << 30, labels: vec!["pool=a".into()], ..Default::default() }, &RULES).unwrap();
        }
        let done = db.lease("w1", &RULES, &Policy::default()).unwrap().unwrap();
        db.complete(&Call { worker: "w1", job: &done.spec.job_id, token: done.token }, "out", &pb::Progress::default(), &RULES).unwrap();
        let running = db.lease("w2", &RULES, &Policy::default()).unwrap().unwrap();
        drop(db);

        let to = pg.fresh_database();
        let copied = copy(&from, &to).unwrap();
        assert!(copied.contains(&("jobs", 3)) && copied.contains(&("attempts", 2)) && copied.contains(&("workers", 2)), "{copied:?}");
        let (before, after) = (Db::connect(&from).unwrap(), Db::connect(&to).unwrap());
        assert_eq!(before.collection("c1").unwrap(), after.collection("c1").unwrap());
        for j in ["a", "b", "q"] {
            assert_eq!(before.job(j).unwrap(), after.job(j).unwrap(), "job {j}");
        }
        assert_eq!(before.workers_page(0, 10, true, 60.0).unwrap(), after.workers_page(0, 10, true, 60.0).unwrap());
        assert_eq!(after.submitted("u1", "k").unwrap(), Some(("c1".to_string(), 3)), "the idempotency key travels");
        // The running lease is still its worker's; the next lease's token
        // is above every copied one.
        let mut after = after;
        let hb = pb::HeartbeatRequest::default();
        after.heartbeat(&Call { worker: "w2", job: &running.spec.job_id, token: running.token }, &hb, None, &RULES).unwrap();
        after.register_worker("w3", &pb::RegisterRequest { name: "w3".into(), device: "cpu".into(), labels: vec!["pool=a".into()], ..Default::default() }, &RULES).unwrap();
        let next = after.lease("w3", &RULES, &Policy::default()).unwrap().unwrap();
        assert!(next.token >> 32 > running.token >> 32, "{} after {}", next.token, running.token);
        // Into a database that already holds a farm: refused by name.
        let again = copy(&from, &to).unwrap_err();
        assert!(again.to_string().contains("already holds a farm"), "{again}");
    }
}
