//! What a request may hold, checked before any work is done on it: one
//! constant each. `farm.proto`'s comments state the same numbers, and the
//! test below reads them there, so the contract a foreign client is
//! written from and the check a request meets cannot drift apart.
//!
//! The limits that are the coordinator's flags (request size, jobs per
//! collection, input megapixels, watchers, submits) live in
//! [`crate::Config`]; these are fixed.

pub use stylefarm_proto::limits::{MAX_CAPABILITIES, MAX_INPUTS, MAX_VARIANTS};
pub use stylefarm_shared::client::MAX_WORKER_MESSAGE_BYTES;
pub use stylefarm_shared::size::MAX_RENDER_SIDE;

/// One variant's JSON: every key set, lists at their longest, fits many
/// times over.
pub const MAX_VARIANT_JSON_BYTES: usize = 16 << 10;
/// A collection's name.
pub const MAX_COLLECTION_NAME_BYTES: usize = 200;
/// A worker's name and its device's name, as Register gives them.
pub const MAX_WORKER_NAME_BYTES: usize = 100;
pub const MAX_DEVICE_NAME_BYTES: usize = 200;
/// Rows of a collection's grid one dashboard request may ask for.
pub const MAX_GRID_ROWS: u32 = 500;
/// A blended column's name (`waves+dots+998_more`), an input's name's
/// limit: every job carries it, so a submit of many long names stays
/// small in the database.
pub const MAX_BLEND_NAME_BYTES: usize = 100;
/// Each capability a worker lists ([`MAX_CAPABILITIES`] of them).
pub const MAX_CAPABILITY_BYTES: usize = 32;
/// A Workers call's request (progress, names, a message): small.
pub const MAX_WORKER_REQUEST_BYTES: usize = 1 << 20;
/// An HTTP body on the dashboard's port other than a submit's.
pub const MAX_SMALL_BODY_BYTES: usize = 64 << 10;
/// Cells (contents × columns) of the contact sheet a dashboard zip
/// carries: 256 cells of 192 px are ~28 MB of pixels while drawn. A
/// larger collection's zip has its images and no sheet.
pub const MAX_SHEET_CELLS: u64 = 256;
/// Workers one ListWorkers page holds (0 asks for this many).
pub const MAX_WORKERS_PAGE: u32 = 500;
/// A submit's notify_url.
pub const MAX_NOTIFY_URL_BYTES: usize = 2000;
/// A worker lost, stopped or quarantined this long ago leaves ListWorkers
/// (its row stays: `include_gone` shows it).
pub const GONE_AFTER_SECONDS: f64 = 3600.0;

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract states every limit a client meets, with the number
    /// this file enforces.
    #[test]
    fn the_contract_states_the_limits_that_are_enforced() {
        let proto = include_str!("../../proto/proto/farm.proto");
        let stated = [
            format!("1..{MAX_RENDER_SIDE} a side"),
            format!("at most {MAX_INPUTS} contents"),
            format!("at most {MAX_INPUTS} styles"),
            format!("at most {MAX_VARIANTS} variants of at most {} KiB of JSON each", MAX_VARIANT_JSON_BYTES >> 10),
            format!("at most {MAX_COLLECTION_NAME_BYTES} bytes"),
            format!("at most {MAX_WORKER_NAME_BYTES} bytes"),
            format!("at most {MAX_DEVICE_NAME_BYTES} bytes"),
            format!("at most {MAX_CAPABILITIES} of at most {MAX_CAPABILITY_BYTES} bytes"),
            format!("at most {} MiB", MAX_WORKER_MESSAGE_BYTES >> 20),
            format!("0: {MAX_WORKERS_PAGE}"),
            format!("most {MAX_NOTIFY_URL_BYTES} bytes"),
            format!("At most {} KiB", MAX_VARIANT_JSON_BYTES >> 10),
            format!(
                "each of the {} conv layers at most once",
                stylefarm_params::arch::VGG19.len()
            ),
            format!("at most {} scales", stylefarm_params::params::MAX_SCALES),
            format!("at most {MAX_GRID_ROWS})"),
        ];
        let missing: Vec<&String> = stated.iter().filter(|s| !proto.contains(s.as_str())).collect();
        assert!(missing.is_empty(), "farm.proto does not state: {missing:?}");
        assert!(!proto.contains("16384"), "a side limit the coordinator does not enforce");
    }
}
