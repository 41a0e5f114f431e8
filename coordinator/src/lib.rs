//! The Stylefarm coordinator: turns collections into jobs, leases them to
//! workers under fencing tokens, requeues what lapses, and keeps it all in
//! an embedded SQLite database so a restart loses nothing.
//!
//! - [`db`]: the schema and every state change, one transaction each;
//! - [`service`]: the gRPC handlers, which validate and hand over to `db`.

pub mod db;
pub mod service;

pub use service::{serve, Config, TlsFiles};
