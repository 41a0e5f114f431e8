//! The worker daemon (one device, leases jobs, drives the engine); not written yet — the farm issue adds it.
