//! One body of SQL for two databases: the embedded SQLite file (the
//! default) and PostgreSQL (several coordinators on one database).
//!
//! [`Db`](super::Db) writes its statements once, in SQLite's spelling
//! (`?1` parameters), with three portable spellings of its own:
//! `GREATEST(a, b)` for the larger of two values, `FOR UPDATE` and
//! `FOR UPDATE SKIP LOCKED` for the rows a transaction must own. [`Conn`]
//! translates each statement once for its backend and caches it.
//!
//! Values cross as [`Value`]: what SQLite stores. PostgreSQL is strict
//! about types, so a parameter is converted to the type the server
//! inferred for it, and a column read is converted from the type it has —
//! the same leniency SQLite gives, with an error that names the column
//! when a value does not fit.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use postgres::types::{ToSql, Type};

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    /// A value that does not fit where it goes.
    #[error("{0}")]
    Type(String),
    /// `query_row` found nothing ([`Optional::optional`] makes it `None`).
    #[error("no row")]
    NoRows,
}

/// PostgreSQL's own message (with its detail), not the client's wrapper.
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {detail}", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

impl Error {
    /// A unique constraint refused a row (another coordinator got there
    /// first).
    pub fn is_unique_violation(&self) -> bool {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE,
            Error::Postgres(e) => e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
            _ => false,
        }
    }
}

impl Error {
    /// Worth retrying: the connection is gone or the server is going
    /// away, or the database broke a deadlock or a serialization conflict
    /// by failing this transaction.
    pub fn is_transient(&self) -> bool {
        use postgres::error::SqlState;
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            }
            Error::Postgres(e) => match e.code() {
                None => true,
                Some(code) => [
                    SqlState::T_R_DEADLOCK_DETECTED,
                    SqlState::T_R_SERIALIZATION_FAILURE,
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::CONNECTION_FAILURE,
                    SqlState::READ_ONLY_SQL_TRANSACTION,
                ]
                .contains(code),
            },
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// `query_row`'s "nothing found" as `None`.
pub trait Optional<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> Optional<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A value as it crosses to and from either database.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

/// What a parameter may be.
pub trait ToValue {
    fn to_value(&self) -> Value;
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(*self as i64)
            }
        }
    )*};
}
int_to_value!(i32, u32, i64, usize);

impl ToValue for u64 {
    /// Above `i64::MAX` is stored as `i64::MAX` (memory sizes: "more than
    /// anyone has").
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(*self as i64)
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

/// A statement's parameters: `args![a, b, c]`.
#[macro_export]
macro_rules! args {
    ($($x:expr),* $(,)?) => {
        &[$($crate::db::sql::ToValue::to_value(&$x)),*][..]
    };
}
pub use crate::args;

/// What a column may be read as.
pub trait FromValue: Sized {
    fn from_value(v: Value) -> std::result::Result<Self, String>;
}

impl FromValue for i64 {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Int(i) => Ok(i),
            // SQLite hands back a REAL column's whole numbers as reals.
            Value::Real(r) if r.fract() == 0.0 => Ok(r as i64),
            other => Err(format!("expected an integer, found {other:?}")),
        }
    }
}

macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: Value) -> std::result::Result<Self, String> {
                let i = i64::from_value(v)?;
                <$t>::try_from(i).map_err(|_| format!("{i} does not fit {}", stringify!($t)))
            }
        }
    )*};
}
int_from_value!(i32, u32, u64, usize);

impl FromValue for bool {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        Ok(i64::from_value(v)? != 0)
    }
}
impl FromValue for f64 {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Real(r) => Ok(r),
            Value::Int(i) => Ok(i as f64),
            other => Err(format!("expected a number, found {other:?}")),
        }
    }
}
impl FromValue for String {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}
impl FromValue for Value {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        Ok(v)
    }
}

/// A column by position or by name.
pub trait Index: Copy + std::fmt::Display {
    fn position(self, names: &mut dyn Iterator<Item = &str>) -> Option<usize>;
    /// Its place in an SQLite statement's columns (by the statement's own
    /// lookup: no list of names built per read).
    fn sqlite_position(self, statement: &rusqlite::Statement) -> Result<usize>;
}
impl Index for usize {
    fn position(self, _: &mut dyn Iterator<Item = &str>) -> Option<usize> {
        Some(self)
    }
    fn sqlite_position(self, _: &rusqlite::Statement) -> Result<usize> {
        Ok(self)
    }
}
impl Index for &str {
    fn sqlite_position(self, statement: &rusqlite::Statement) -> Result<usize> {
        Ok(statement.column_index(self)?)
    }
    fn position(self, names: &mut dyn Iterator<Item = &str>) -> Option<usize> {
        let mut at = 0;
        for n in names {
            if n == self {
                return Some(at);
            }
            at += 1;
        }
        None
    }
}

/// One row of a result, from either database.
pub enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a postgres::Row),
}

impl Row<'_> {
    /// Column `i` (a position or a name) as a `T`.
    pub fn get<I: Index, T: FromValue>(&self, i: I) -> Result<T> {
        let value = match self {
            Row::Sqlite(r) => {
                let at = i.sqlite_position(r.as_ref())?;
                match r.get_ref(at)? {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                    rusqlite::types::ValueRef::Real(v) => Value::Real(v),
                    rusqlite::types::ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    rusqlite::types::ValueRef::Blob(_) => return Err(Error::Type(format!("column {i} holds bytes"))),
                }
            }
            Row::Postgres(r) => {
                let at = i.position(&mut r.columns().iter().map(|c| c.name())).ok_or_else(|| Error::Type(format!("no column {i}")))?;
                pg_value(r, at)?
            }
        };
        T::from_value(value).map_err(|e| Error::Type(format!("column {i}: {e}")))
    }

    /// Every column's name and value (for copying a table).
    pub fn values(&self) -> Result<Vec<(String, Value)>> {
        let names: Vec<String> = match self {
            Row::Sqlite(r) => r.as_ref().column_names().into_iter().map(str::to_string).collect(),
            Row::Postgres(r) => r.columns().iter().map(|c| c.name().to_string()).collect(),
        };
        names.into_iter().enumerate().map(|(i, n)| Ok((n, self.get::<_, Value>(i)?))).collect()
    }
}

/// Column `at` of a PostgreSQL row, by its type.
fn pg_value(r: &postgres::Row, at: usize) -> Result<Value> {
    let ty = r.columns().get(at).map(|c| c.type_().clone()).ok_or_else(|| Error::Type(format!("no column {at}")))?;
    let v = match ty {
        Type::INT2 => r.try_get::<_, Option<i16>>(at)?.map(|v| Value::Int(v as i64)),
        Type::INT4 => r.try_get::<_, Option<i32>>(at)?.map(|v| Value::Int(v as i64)),
        Type::INT8 => r.try_get::<_, Option<i64>>(at)?.map(Value::Int),
        Type::FLOAT4 => r.try_get::<_, Option<f32>>(at)?.map(|v| Value::Real(v as f64)),
        Type::FLOAT8 => r.try_get::<_, Option<f64>>(at)?.map(Value::Real),
        Type::BOOL => r.try_get::<_, Option<bool>>(at)?.map(|v| Value::Int(v as i64)),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => r.try_get::<_, Option<String>>(at)?.map(Value::Text),
        other => return Err(Error::Type(format!("column {at} has type {other}, which the coordinator does not read"))),
    };
    Ok(v.unwrap_or(Value::Null))
}

/// A parameter converted to the type PostgreSQL inferred for it.
fn pg_param(v: &Value, ty: &Type, at: usize) -> Result<Box<dyn ToSql + Sync>> {
    let wrong = || Error::Type(format!("parameter {} ({v:?}) does not fit {ty}", at + 1));
    let int = |v: &Value| match v {
        Value::Int(i) => Ok(Some(*i)),
        Value::Null => Ok(None),
        _ => Err(wrong()),
    };
    Ok(match *ty {
        Type::INT2 => Box::new(int(v)?.map(i16::try_from).transpose().map_err(|_| wrong())?),
        Type::INT4 => Box::new(int(v)?.map(i32::try_from).transpose().map_err(|_| wrong())?),
        Type::INT8 => Box::new(int(v)?),
        Type::BOOL => Box::new(int(v)?.map(|i| i != 0)),
        Type::FLOAT8 | Type::FLOAT4 | Type::NUMERIC => {
            let f = match v {
                Value::Real(r) => Some(*r),
                Value::Int(i) => Some(*i as f64),
                Value::Null => None,
                Value::Text(_) => return Err(wrong()),
            };
            if *ty == Type::FLOAT4 { Box::new(f.map(|f| f as f32)) } else if *ty == Type::FLOAT8 { Box::new(f) } else { return Err(wrong()) }
        }
        _ => match v {
            Value::Text(s) => Box::new(s.clone()),
            Value::Null => Box::new(None::<String>),
            Value::Int(i) => Box::new(i.to_string()),
            Value::Real(r) => Box::new(r.to_string()),
        },
    })
}

/// Which database a [`Conn`] talks to, and what it needs to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The embedded file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL URL (`postgres://user:password@host:5432/farm`).
    Postgres(String),
}

impl Target {
    /// `--database`: a `postgres://` (or `postgresql://`) URL, or
    /// `sqlite:PATH`.
    pub fn parse(s: &str) -> std::result::Result<Target, String> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            s.parse::<postgres::Config>().map_err(|e| format!("--database {}: {e}", redact(s)))?;
            Ok(Target::Postgres(s.to_string()))
        } else if let Some(path) = s.strip_prefix("sqlite:") {
            Ok(Target::Sqlite(path.into()))
        } else {
            Err(format!("--database {}: expected postgres://… or sqlite:PATH", redact(s)))
        }
    }

    /// Where it is, with no password (for logs and errors).
    pub fn describe(&self) -> String {
        match self {
            Target::Sqlite(p) => p.display().to_string(),
            Target::Postgres(url) => redact(url),
        }
    }
}

/// A URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            let user = user.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

enum Backend {
    Sqlite(rusqlite::Connection),
    Postgres { client: RefCell<postgres::Client>, statements: RefCell<HashMap<String, postgres::Statement>> },
}

/// A connection to either database.
pub struct Conn {
    backend: Backend,
    /// Savepoints open (0: none; the outermost is a transaction of its own
    /// unless [`Conn::begin`] opened one).
    depth: Cell<u32>,
    in_transaction: Cell<bool>,
}

impl Conn {
    pub fn sqlite(conn: rusqlite::Connection) -> Conn {
        Conn { backend: Backend::Sqlite(conn), depth: Cell::new(0), in_transaction: Cell::new(false) }
    }

    pub fn postgres(url: &str) -> Result<Conn> {
        let client = postgres::Client::connect(url, postgres::NoTls)?;
        Ok(Conn {
            backend: Backend::Postgres { client: RefCell::new(client), statements: RefCell::new(HashMap::new()) },
            depth: Cell::new(0),
            in_transaction: Cell::new(false),
        })
    }

    /// A PostgreSQL connection the server or the network closed: no use
    /// any more.
    pub fn is_closed(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(_) => false,
            Backend::Postgres { client, .. } => client.try_borrow().map_or(false, |c| c.is_closed()),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres { .. })
    }

    /// The SQLite connection (its own pragmas and migrations).
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.backend {
            Backend::Sqlite(c) => Some(c),
            Backend::Postgres { .. } => None,
        }
    }

    /// Runs statements that take no parameters (schema, BEGIN).
    pub fn batch(&self, sql: &str) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Backend::Postgres { client, .. } => Ok(client.borrow_mut().batch_execute(sql)?),
        }
    }

    /// A PostgreSQL statement, prepared once per connection.
    fn pg_statement(&self, client: &mut postgres::Client, statements: &RefCell<HashMap<String, postgres::Statement>>, sql: &str) -> Result<postgres::Statement> {
        if let Some(s) = statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = client.prepare(&to_postgres(sql))?;
        statements.borrow_mut().insert(sql.to_string(), s.clone());
        Ok(s)
    }

    fn pg_args(statement: &postgres::Statement, args: &[Value]) -> Result<Vec<Box<dyn ToSql + Sync>>> {
        let types = statement.params();
        if types.len() != args.len() {
            return Err(Error::Type(format!("the statement takes {} parameters, given {}", types.len(), args.len())));
        }
        args.iter().zip(types).enumerate().map(|(i, (v, ty))| pg_param(v, ty, i)).collect()
    }

    /// Runs one statement; how many rows it changed.
    pub fn execute(&self, sql: &str, args: &[Value]) -> Result<usize> {
        match &self.backend {
            Backend::Sqlite(c) => {
                let mut stmt = c.prepare_cached(&to_sqlite(sql))?;
                Ok(stmt.execute(rusqlite::params_from_iter(args.iter().map(sqlite_value)))?)
            }
            Backend::Postgres { client, statements } => {
                let mut client = client.borrow_mut();
                let statement = self.pg_statement(&mut client, statements, sql)?;
                let args = Self::pg_args(&statement, args)?;
                let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref()).collect();
                Ok(client.execute(&statement, &refs)? as usize)
            }
        }
    }

    /// Every row of a query, each through `f`.
    pub fn query_map<T>(&self, sql: &str, args: &[Value], mut f: impl FnMut(&Row) -> Result<T>) -> Result<Vec<T>> {
        match &self.backend {
            Backend::Sqlite(c) => {
                let mut stmt = c.prepare_cached(&to_sqlite(sql))?;
                let mut rows = stmt.query(rusqlite::params_from_iter(args.iter().map(sqlite_value)))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(f(&Row::Sqlite(r))?);
                }
                Ok(out)
            }
            Backend::Postgres { client, statements } => {
                let rows = {
                    let mut client = client.borrow_mut();
                    let statement = self.pg_statement(&mut client, statements, sql)?;
                    let args = Self::pg_args(&statement, args)?;
                    let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref()).collect();
                    client.query(&statement, &refs)?
                };
                rows.iter().map(|r| f(&Row::Postgres(r))).collect()
            }
        }
    }

    /// The first row of a query through `f`; [`Error::NoRows`] if none.
    pub fn query_row<T>(&self, sql: &str, args: &[Value], f: impl FnOnce(&Row) -> Result<T>) -> Result<T> {
        let mut f = Some(f);
        let mut first = self.query_map(sql, args, |r| match f.take() {
            Some(f) => f(r).map(Some),
            None => Ok(None),
        })?;
        match first.first_mut().and_then(Option::take) {
            Some(v) => Ok(v),
            None => Err(Error::NoRows),
        }
    }

    /// Listens on a PostgreSQL channel (`LISTEN`).
    pub fn listen(&self, channel: &str) -> Result<()> {
        self.batch(&format!("LISTEN {channel}"))
    }

    /// The payloads of the notifications that arrive within `wait` (none
    /// on SQLite).
    pub fn notifications(&self, wait: std::time::Duration) -> Result<Vec<String>> {
        let Backend::Postgres { client, .. } = &self.backend else { return Ok(Vec::new()) };
        let mut client = client.borrow_mut();
        let mut notifications = client.notifications();
        let mut payloads = Vec::new();
        let mut them = notifications.timeout_iter(wait);
        while let Some(n) = postgres::fallible_iterator::FallibleIterator::next(&mut them)? {
            payloads.push(n.payload().to_string());
        }
        Ok(payloads)
    }

    /// Opens the transaction the next calls share (group commit).
    pub fn begin(&self) -> Result<()> {
        self.batch(if self.is_postgres() { "BEGIN" } else { "BEGIN IMMEDIATE" })?;
        self.in_transaction.set(true);
        Ok(())
    }

    pub fn commit(&self) -> Result<()> {
        self.in_transaction.set(false);
        self.batch("COMMIT")
    }

    pub fn rollback(&self) {
        self.in_transaction.set(false);
        let _ = self.batch("ROLLBACK");
    }

    /// A savepoint inside the open transaction (or a transaction of its
    /// own): committed by [`Savepoint::commit`], undone when dropped.
    pub fn savepoint(&self) -> Result<Savepoint<'_>> {
        let outer = self.depth.get() == 0 && !self.in_transaction.get();
        self.batch(if outer { if self.is_postgres() { "BEGIN" } else { "BEGIN IMMEDIATE" } } else { "SAVEPOINT sp" })?;
        self.depth.set(self.depth.get() + 1);
        Ok(Savepoint { conn: self, outer, done: false })
    }
}

/// An open savepoint; derefs to its connection.
pub struct Savepoint<'a> {
    conn: &'a Conn,
    outer: bool,
    done: bool,
}

impl Savepoint<'_> {
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        self.conn.depth.set(self.conn.depth.get() - 1);
        self.conn.batch(if self.outer { "COMMIT" } else { "RELEASE SAVEPOINT sp" })
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.conn.depth.set(self.conn.depth.get() - 1);
            let _ = self.conn.batch(if self.outer { "ROLLBACK" } else { "ROLLBACK TO SAVEPOINT sp; RELEASE SAVEPOINT sp" });
        }
    }
}

impl std::ops::Deref for Savepoint<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
    }
}

fn sqlite_value(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(i) => rusqlite::types::Value::Integer(*i),
        Value::Real(r) => rusqlite::types::Value::Real(*r),
        Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
    }
}

/// The portable spelling in SQLite's: `GREATEST(` is `MAX(`, row locks
/// are not needed (one writer).
fn to_sqlite(sql: &str) -> String {
    sql.replace("GREATEST(", "MAX(").replace(" FOR UPDATE SKIP LOCKED", "").replace(" FOR UPDATE", "")
}

/// The portable spelling in PostgreSQL's: `$1` for `?1`, no index hints,
/// `strpos` for `instr`.
fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(c),
        }
    }
    // `INDEXED BY name`: SQLite's hint; PostgreSQL plans for itself.
    while let Some(at) = out.find("INDEXED BY ") {
        let rest = &out[at + "INDEXED BY ".len()..];
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
        out.replace_range(at..at + "INDEXED BY ".len() + end, "");
    }
    out.replace("instr(", "strpos(")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_spelled_for_each_backend() {
        let sql = "SELECT GREATEST(a, ?1) FROM jobs INDEXED BY jobs_queue WHERE b = '?1' AND c = ?12 ORDER BY d LIMIT 1 FOR UPDATE SKIP LOCKED";
        assert_eq!(to_postgres(sql), "SELECT GREATEST(a, $1) FROM jobs  WHERE b = '?1' AND c = $12 ORDER BY d LIMIT 1 FOR UPDATE SKIP LOCKED");
        assert_eq!(to_sqlite(sql), "SELECT MAX(a, ?1) FROM jobs INDEXED BY jobs_queue WHERE b = '?1' AND c = ?12 ORDER BY d LIMIT 1");
        assert_eq!(to_postgres("substr(o, 1, instr(o, ')'))"), "substr(o, 1, strpos(o, ')'))");
    }

    #[test]
    fn a_database_is_named_by_url_or_path_and_passwords_stay_out_of_messages() {
        assert_eq!(Target::parse("sqlite:/var/farm.db"), Ok(Target::Sqlite("/var/farm.db".into())));
        let pg = Target::parse("postgres://farm:s3cret@db:5432/farm").unwrap();
        assert_eq!(pg.describe(), "postgres://farm:***@db:5432/farm");
        let e = Target::parse("mysql://farm:s3cret@db/farm").unwrap_err();
        assert!(e.contains("expected postgres://") && !e.contains("s3cret"), "{e}");
    }

    #[test]
    fn values_convert_as_sqlite_would_and_say_what_does_not_fit() {
        assert_eq!(u32::from_value(Value::Int(7)), Ok(7));
        assert!(u32::from_value(Value::Int(-1)).unwrap_err().contains("does not fit u32"));
        assert_eq!(f64::from_value(Value::Int(2)), Ok(2.0));
        assert_eq!(bool::from_value(Value::Int(1)), Ok(true));
        assert_eq!(Option::<String>::from_value(Value::Null), Ok(None));
        assert_eq!(u64::MAX.to_value(), Value::Int(i64::MAX));
        assert!(pg_param(&Value::Int(1 << 40), &Type::INT4, 0).is_err());
        assert!(pg_param(&Value::Int(1 << 40), &Type::INT8, 0).is_ok());
    }
}
