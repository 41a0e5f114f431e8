//! The coordinator (collections → jobs, leases with fencing, SQLite); not written yet — the farm issue adds it.
