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
}

/// Copies every table of `from` (SQLite) into `to` (PostgreSQL, empty) in
/// one transaction: all of it or nothing. Returns the rows copied per
/// table.
pub fn copy(from: &Target, to: &Target) -> Result<Vec<(&'static str, usize)>, CopyError> {
    let (Target::Sqlite(path), Target::Postgres(_)) = (from, to) else { return Err(CopyError::Direction) };
    if !path.exists() {
        return Err(CopyError::Open(from.describe(), sql::Error::Type("no such file".into())));
    }
    let source = Db::connect(from).map_err(|e| CopyError::Open(from.describe(), e))?;
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
