//! One coordinator per SQLite file. SQLite takes writers from several
//! processes, but the farm's rules do not: two coordinators on one file
//! each sweep the other's leases and replace the other's workers. A second
//! coordinator on the same file therefore stops at start, naming the
//! process that holds it.
//!
//! The guard is an OS lock (`flock`) on `FILE.lock` beside the database,
//! held for the process's life: the kernel drops it when the process ends
//! however it ends, so a crashed coordinator leaves no stale lock. The file
//! also says who holds it (pid and host), for the message. PostgreSQL
//! needs none of this: several coordinators share one database by design.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Held while this process uses the database; dropping it frees the file.
#[derive(Debug)]
pub struct SingleWriter {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the database {database} is in use by another coordinator ({holder}): one coordinator per SQLite file; stop that one, or give this one another --data-dir (several coordinators share a PostgreSQL --database)")]
    Held { database: String, holder: String },
    #[error("cannot lock {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl SingleWriter {
    /// Takes the lock of the SQLite file `database`, or says who has it.
    pub fn acquire(database: &Path) -> Result<SingleWriter, LockError> {
        let path = lock_path(database);
        let io = |source| LockError::Io { path: path.clone(), source };
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = Some(holder.trim().to_string()).filter(|h| !h.is_empty()).unwrap_or_else(|| "a process that is still starting".into());
                return Err(LockError::Held { database: database.display().to_string(), holder });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "pid {} on host {}", std::process::id(), stylefarm_shared::host::name().unwrap_or_else(|| "unknown".into())).and_then(|_| file.flush()).map_err(io)?;
        Ok(SingleWriter { _file: file })
    }
}

/// `farm.db` → `farm.db.lock`.
fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    database.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first_and_a_dropped_lock_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("farm.db");
        let first = SingleWriter::acquire(&db).unwrap();
        let refused = SingleWriter::acquire(&db).unwrap_err();
        let message = refused.to_string();
        assert!(matches!(refused, LockError::Held { .. }), "{message}");
        assert!(message.contains(&db.display().to_string()) && message.contains(&format!("pid {}", std::process::id())) && message.contains(&stylefarm_shared::host::name().unwrap_or_else(|| "unknown".into())), "{message}");
        drop(first);
        let again = SingleWriter::acquire(&db).expect("a released lock is free again");
        assert!(std::fs::read_to_string(dir.path().join("farm.db.lock")).unwrap().starts_with("pid "));
        drop(again);
    }
}
