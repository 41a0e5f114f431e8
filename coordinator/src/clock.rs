//! The farm's clock. Lease deadlines, last-seen times and retry backoffs
//! are written by one coordinator and compared by another, so on a shared
//! database (PostgreSQL) every coordinator tells time by the database's
//! clock: its own clock plus an offset measured against the database's
//! every couple of seconds ([`crate::db::Db::sync_clock`]). Alone on its
//! SQLite file, a coordinator's own clock is the farm's (the offset stays
//! 0). A coordinator whose clock is minutes off then neither expires
//! healthy leases nor keeps dead ones.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;

/// The database's clock less this machine's, in microseconds.
static OFFSET_MICROS: AtomicI64 = AtomicI64::new(0);

/// The farm's time, in seconds since the Unix epoch.
pub fn now() -> f64 {
    local() + OFFSET_MICROS.load(Ordering::Relaxed) as f64 / 1e6
}

/// This machine's time, seconds since the Unix epoch (tests may set it
/// off with `STYLEFARM_TEST_CLOCK_SKEW_SECONDS`, as a badly set clock is).
pub fn local() -> f64 {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    unix + skew()
}

/// Sets how far the database's clock is from this machine's.
pub fn set_offset(seconds: f64) {
    if seconds.is_finite() {
        OFFSET_MICROS.store((seconds * 1e6) as i64, Ordering::Relaxed);
    }
}

fn skew() -> f64 {
    static SKEW: OnceLock<f64> = OnceLock::new();
    *SKEW.get_or_init(|| std::env::var("STYLEFARM_TEST_CLOCK_SKEW_SECONDS").ok().and_then(|s| s.parse().ok()).filter(|s: &f64| s.is_finite()).unwrap_or(0.0))
}
