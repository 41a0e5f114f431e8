//! What a job's parameters must be to be queued, asked by a submit of
//! each variant and by a retry with changes alike: valid, runnable by a
//! farm worker, and within reach of a registered device. Pure: no state,
//! no I/O.

use stylefarm_params::memory::FARM_TILE_FLOOR;
use stylefarm_params::{Init, JobParams};
use tonic::Status;

/// Parses and checks one variant's parameters (`what` names it in an
/// error): the schema (unknown keys by name), the values, and what no
/// worker can run.
pub(crate) fn check_variant(
    what: &str,
    json: &str,
    styles_per_job: usize,
) -> Result<JobParams, Status> {
    let job = JobParams::from_json(json)
        .map_err(|e| Status::invalid_argument(format!("{what}: {e}")))?;
    job.render
        .validate(styles_per_job)
        .map_err(|e| Status::invalid_argument(format!("{what}: {e}")))?;
    if job.render.init == Init::Image {
        return Err(Status::invalid_argument(format!("{what}: init \"image\" needs an image, and a farm job has none; use blend, content or noise")));
    }
    Ok(job)
}

/// FAILED_PRECONDITION, naming `what` and the numbers, when a render that
/// needs `bytes` (in tiles of the farm's floor) is more than the `largest`
/// device has: no worker would ever lease it. Submit and a retry with
/// changes both ask.
pub(crate) fn check_fits(bytes: u64, largest: u64, what: impl FnOnce() -> String) -> Result<(), Status> {
    if bytes <= largest {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(Status::failed_precondition(format!(
        "{} needs about {:.1} GiB even in tiles of {FARM_TILE_FLOOR} px, and the largest registered device has {:.1} GiB; render it smaller",
        what(),
        gib(bytes),
        gib(largest)
    )))
}
