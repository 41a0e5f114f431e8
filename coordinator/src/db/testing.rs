//! A PostgreSQL server for tests: `STYLEFARM_TEST_POSTGRES` names one
//! (`scripts/test.sh` starts a throwaway cluster and sets it), and each
//! test takes a fresh database on it, dropped when the test's guard goes.

use super::sql::{args, Conn};
use super::Target;

/// The server tests may create databases on.
pub struct Postgres {
    /// A URL whose database is an administrative one (`postgres`).
    admin: String,
}

/// A database made for one test; dropped with it.
pub struct FreshDatabase {
    admin: String,
    name: String,
    pub target: Target,
}

impl std::ops::Deref for FreshDatabase {
    type Target = Target;
    fn deref(&self) -> &Target {
        &self.target
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        if let Ok(admin) = Conn::postgres(&self.admin) {
            let _ = admin.batch(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

impl Postgres {
    /// The server `STYLEFARM_TEST_POSTGRES` names, if it is set.
    pub fn from_env() -> Option<Postgres> {
        std::env::var("STYLEFARM_TEST_POSTGRES").ok().filter(|u| !u.is_empty()).map(|admin| Postgres { admin })
    }

    /// A new, empty database on the server.
    pub fn fresh_database(&self) -> FreshDatabase {
        let name = format!("sf_{}", uuid::Uuid::new_v4().simple());
        let admin = Conn::postgres(&self.admin).unwrap_or_else(|e| panic!("STYLEFARM_TEST_POSTGRES ({}): {e}", self.admin));
        admin.batch(&format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("creating a test database: {e}"));
        let _ = admin.query_row("SELECT 1", args![], |_| Ok(()));
        let url = match self.admin.rfind('/') {
            Some(slash) if self.admin[..slash].contains("://") && !self.admin[slash..].contains('@') => {
                let query = self.admin[slash..].find('?').map(|q| &self.admin[slash + q..]).unwrap_or("");
                format!("{}/{name}{query}", &self.admin[..slash])
            }
            _ => panic!("STYLEFARM_TEST_POSTGRES must be a URL ending in /DATABASE"),
        };
        FreshDatabase { admin: self.admin.clone(), name, target: Target::Postgres(url) }
    }
}
