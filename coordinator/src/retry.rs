//! Retry with changes (`Farm.RetryJob` with `changes_json`): a failed or
//! cancelled job's parameters with the keys a person changes, checked as a
//! submit checks a variant. The job keeps its id, its cell and its earlier
//! attempts; the new series starts from the init.

use serde_json::{Map, Value};
use tonic::Status;

use crate::db::{CallError, Db, NewParams};
use crate::limits::MAX_VARIANT_JSON_BYTES;
use crate::checks::{check_fits, check_variant};

/// Job `job`'s parameters after `changes_json` (`None`: no change asked),
/// read from the database; refused when the changed job would not fit
/// `largest`, the largest registered device (as a submit's would be).
pub(crate) fn changed_job(db: &Db, job: &str, changes_json: &str, largest: Option<u64>) -> Result<Option<NewParams>, CallError> {
    if changes_json.trim().is_empty() {
        return Ok(None);
    }
    let (params, styles, width, height) = db.job_for_retry(job)?.ok_or_else(|| CallError::NoJob(job.to_string()))?;
    let changed = changed_params(&params, changes_json, styles, (width, height)).map_err(|s| CallError::Invalid { job: job.to_string(), what: s.message().to_string() })?;
    if let (Some(new), Some(largest)) = (&changed, largest) {
        check_fits(new.min_memory, largest, || format!("job {job} at {width}x{height} with these changes")).map_err(|s| CallError::WontFit(s.message().to_string()))?;
    }
    Ok(changed)
}

/// The job's parameters after `changes_json` (`None`: no change asked).
/// `current_json` holds every key; `styles` is how many styles the job
/// blends; `(width, height)` its size, for the memory estimate.
pub(crate) fn changed_params(
    current_json: &str,
    changes_json: &str,
    styles: usize,
    (width, height): (u32, u32),
) -> Result<Option<NewParams>, Status> {
    let bad = |why: String| Status::invalid_argument(format!("the retry's changes: {why}"));
    if changes_json.len() > MAX_VARIANT_JSON_BYTES {
        return Err(bad(format!(
            "{} bytes; at most {MAX_VARIANT_JSON_BYTES}",
            changes_json.len()
        )));
    }
    if changes_json.trim().is_empty() {
        return Ok(None);
    }
    let changes: Map<String, Value> = match serde_json::from_str(changes_json) {
        Ok(Value::Object(m)) => m,
        Ok(other) => {
            return Err(bad(format!(
                "{} is not a JSON object of parameters",
                short(&other.to_string())
            )))
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    if changes.is_empty() {
        return Ok(None);
    }
    if changes.contains_key("preset") {
        return Err(bad("a retry changes the keys it names; a preset sets them all, so submit anew for another preset".into()));
    }
    let mut params: Map<String, Value> = match serde_json::from_str(current_json) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Err(Status::internal(
                "the job's stored parameters are not a JSON object",
            ))
        }
    };
    if changes.contains_key("iterations") {
        params.remove("iters");
    }
    // A job stored before workers chose their own tiling may name one.
    for key in ["tile", "keep_tiles"] {
        params.remove(key);
    }
    params.extend(changes);
    let merged = Value::Object(params).to_string();
    let checked = check_variant("changes_json", &merged, styles)?;
    Ok(Some(NewParams {
        params_json: checked.to_json(),
        iterations: checked.render.iterations as u32,
        min_memory: checked.render.least_peak_bytes(width, height),
    }))
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stylefarm_params::RenderParams;

    fn current() -> String {
        serde_json::to_string(&RenderParams::default()).unwrap()
    }

    #[test]
    fn a_change_keeps_every_other_key_and_is_checked_like_a_submit() {
        let p = changed_params(&current(), r#"{"beta": 5000, "iters": 7}"#, 1, (32, 32))
            .unwrap()
            .unwrap();
        let back = RenderParams::from_json(&p.params_json).unwrap();
        let before = RenderParams::default();
        assert_eq!((back.beta, back.iterations, p.iterations), (5000.0, 7, 7));
        assert_eq!(
            (back.alpha, back.lr, back.optimizer),
            (before.alpha, before.lr, before.optimizer),
            "unnamed keys keep their values"
        );
        assert!(p.min_memory > 0);
        for none in ["", "  ", "{}"] {
            assert!(
                changed_params(&current(), none, 1, (32, 32))
                    .unwrap()
                    .is_none(),
                "{none:?}"
            );
        }
        for (changes, named) in [
            (r#"{"betta": 1}"#, "betta"),
            (r#"{"beta": -1}"#, "beta"),
            (r#"{"init": "image"}"#, "init"),
            (r#"{"preset": "fast"}"#, "preset"),
            (r#"{"tile": 512}"#, "tile"),
            ("[1, 2]", "not a JSON object"),
            ("{", "the retry's changes"),
        ] {
            let e = changed_params(&current(), changes, 1, (32, 32)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{changes}");
            assert!(e.message().contains(named), "{changes}: {}", e.message());
        }
        let huge = format!(r#"{{"seed": 1{}}}"#, " ".repeat(MAX_VARIANT_JSON_BYTES));
        assert!(changed_params(&current(), &huge, 1, (32, 32))
            .unwrap_err()
            .message()
            .contains("at most"));
    }
}
