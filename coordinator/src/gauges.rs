//! The farm's gauges on `/metrics`, refreshed every two seconds by the
//! lease sweep: jobs by state, the queued jobs each size of device could
//! take, which is what an autoscaler reads (`deploy/k8s/overlays/autoscale`
//! scales workers on it), and the bytes stored, in all and by owner (per
//! collection they are in `status` and on the page: a series per
//! collection would grow without bound).

use crate::db::Db;

/// Device memory sizes the queue is counted against, in GiB: common pod
/// limits and GPU sizes.
pub const DEVICE_GIB: [u64; 14] = [1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 80, 96, 141];

/// Sets every gauge from the database.
pub fn refresh(db: &Db) -> crate::db::sql::Result<()> {
    let counts = db.counts()?;
    for state in crate::machine::State::ALL {
        metrics::gauge!("stylefarm_jobs", "state" => state.name()).set(counts.of(state.to_wire()) as f64);
    }
    metrics::gauge!("stylefarm_queue_length").set(counts.queued as f64);
    let queued = db.queued_by_memory()?;
    for (gib, n) in DEVICE_GIB.iter().zip(fitting(&queued, &DEVICE_GIB)) {
        metrics::gauge!("stylefarm_queued_jobs_fitting", "memory_gib" => gib.to_string()).set(n as f64);
    }
    metrics::gauge!("stylefarm_stored_bytes").set(db.stored_bytes()? as f64);
    for (owner, bytes) in db.stored_bytes_by_owner()? {
        metrics::gauge!("stylefarm_stored_bytes_by_owner", "owner" => owner).set(bytes as f64);
    }
    Ok(())
}

/// For each device size (GiB), how many queued jobs need at most that
/// much memory: `queued` is (least memory in bytes, jobs) as the queue
/// holds it. A job that needs more than the largest size counts nowhere
/// (its own line would be `+Inf`: `stylefarm_queue_length` less the last).
pub fn fitting(queued: &[(u64, u64)], sizes_gib: &[u64]) -> Vec<u64> {
    sizes_gib.iter().map(|gib| queued.iter().filter(|(need, _)| *need <= gib << 30).map(|(_, n)| n).sum()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_size_counts_the_jobs_it_could_take() {
        const GIB: u64 = 1 << 30;
        let queued = [(0, 3), (GIB / 2, 2), (2 * GIB, 5), (2 * GIB + 1, 7), (200 * GIB, 1)];
        assert_eq!(fitting(&queued, &[1, 2, 4, 141]), [5, 10, 17, 17]);
        assert_eq!(fitting(&[], &[1, 2]), [0, 0]);
    }
}
