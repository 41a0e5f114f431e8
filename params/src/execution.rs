//! How a render is run, apart from what it is: the tiling, the tiles whose
//! activations are kept, the bit depth of the PNGs. None of them changes
//! the render — a tiled render equals the untiled one, and a checkpoint
//! resumes under any of them — so they are not in [`RenderParams`] (a
//! render's identity) but decided by whoever runs it: `farmctl render`
//! from its flags and its memory, a farm worker from its own memory
//! ([`crate::memory`]).
//!
//! A farm job carries the render's parameters and, beside them, the one
//! hint that is the submitter's to choose — the output's bit depth — as
//! [`JobParams`]. A job that names its tiling is refused by name: the
//! worker that leases it knows its memory, the submitter does not.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{invalid, ParamError, Result};
use crate::params::RenderParams;

pub use crate::params::HINTS;

/// The largest tile side (a render's side is at most 8192 pixels).
pub const MAX_TILE: usize = 8192;

/// How one render is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Execution {
    /// Evaluate the losses tile by tile, tiles of this many pixels a side
    /// (rounded up to the deepest layer's pooling stride): the same
    /// losses and gradient as untiled, in the memory of one tile and its
    /// halo.
    pub tile: Option<usize>,
    /// Tiled: how many tiles keep their activations from pass 1 for pass
    /// 2 (the last always does), each one forward pass fewer per step for
    /// its crop's activations in memory
    /// ([`RenderParams::most_tiles_kept`]).
    pub keep_tiles: usize,
    /// Bits per channel of the PNGs the render writes: 8, or 16 to keep
    /// what rounding to 8 bits would lose.
    pub bit_depth: u8,
}

impl Default for Execution {
    fn default() -> Self {
        Self { tile: None, keep_tiles: 0, bit_depth: 8 }
    }
}

impl Execution {
    /// Checks the tile side and the bit depth; the error names the one
    /// that is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.tile.is_some_and(|t| !(16..=MAX_TILE).contains(&t)) {
            return Err(invalid("tile", format!("{:?} pixels: a tile is 16 to {MAX_TILE} pixels a side", self.tile)));
        }
        check_bit_depth(self.bit_depth)
    }
}

fn check_bit_depth(bits: u8) -> Result<()> {
    if !matches!(bits, 8 | 16) {
        return Err(invalid("bit_depth", format!("{bits} bits: a PNG here has 8 or 16 bits per channel")));
    }
    Ok(())
}

/// A farm job's parameters as they travel (a submit's variant, a job's
/// `params_json`): the render's identity and the bit depth of its PNGs.
#[derive(Debug, Clone, PartialEq)]
pub struct JobParams {
    pub render: RenderParams,
    /// 8 or 16; written only when 16.
    pub bit_depth: u8,
}

impl JobParams {
    /// A submitted variant: [`RenderParams::from_json`]'s keys (a preset
    /// included) and `bit_depth`. `tile` and `keep_tiles` are refused by
    /// name: the worker that leases the job decides them from its memory.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::read(json, false)
    }

    /// Parameters the farm stored: as [`Self::from_json`], except that a
    /// tiling named by a job submitted before workers chose their own is
    /// dropped (the caller says so where a person reads it).
    pub fn from_stored(json: &str) -> Result<Self> {
        Self::read(json, true)
    }

    fn read(json: &str, drop_tiling: bool) -> Result<Self> {
        let schema = |key: &str, reason: String| ParamError::Schema { key: key.to_string(), reason };
        let mut obj: Map<String, Value> = match serde_json::from_str(json).map_err(|e| schema("parameters", e.to_string()))? {
            Value::Object(obj) => obj,
            other => return Err(schema("parameters", format!("{other} is not a JSON object of parameters"))),
        };
        for key in ["tile", "keep_tiles"] {
            if obj.remove(key).is_some() && !drop_tiling {
                return Err(schema(key, "a farm job does not choose its tiling: the worker that leases it tiles as its memory requires; leave it out".into()));
            }
        }
        let bit_depth = match obj.remove("bit_depth") {
            None => 8,
            Some(v) => v.as_u64().and_then(|b| u8::try_from(b).ok()).ok_or_else(|| schema("bit_depth", format!("{v} is not 8 or 16")))?,
        };
        check_bit_depth(bit_depth)?;
        let render = RenderParams::from_json(&Value::Object(obj).to_string())?;
        Ok(Self { render, bit_depth })
    }

    /// The wire form: the render's parameters, and `bit_depth` when 16.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(&self.render).unwrap_or(Value::Null);
        if let (Some(obj), 16) = (value.as_object_mut(), self.bit_depth) {
            obj.insert("bit_depth".into(), Value::from(16));
        }
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_names_its_bit_depth_but_never_its_tiling() {
        let job = JobParams::from_json(r#"{"preset": "fast", "bit_depth": 16, "seed": 3}"#).unwrap();
        assert_eq!((job.bit_depth, job.render.seed, job.render.iterations), (16, 3, crate::Preset::Fast.params().iterations));
        assert_eq!(JobParams::from_json(&job.to_json()).unwrap(), job, "the wire form reads back");
        assert!(job.to_json().contains("\"bit_depth\":16"));
        assert!(!JobParams::from_json("{}").unwrap().to_json().contains("bit_depth"), "8 bits is not written");
        for (json, needle) in [(r#"{"tile": 512}"#, "tile"), (r#"{"keep_tiles": 3}"#, "keep_tiles"), (r#"{"bit_depth": 12}"#, "bit_depth"), (r#"{"bit_depth": "x"}"#, "bit_depth"), ("[1]", "parameters"), (r#"{"alhpa": 1}"#, "alhpa")] {
            let e = JobParams::from_json(json).unwrap_err().to_string();
            assert!(e.contains(needle), "{json}: {e}");
        }
        assert!(JobParams::from_json(r#"{"tile": 512}"#).unwrap_err().to_string().contains("the worker that leases it"));
        // What the farm stored before workers chose their tiling still runs.
        let old = JobParams::from_stored(r#"{"iters": 5, "tile": 512, "keep_tiles": 2}"#).unwrap();
        assert_eq!(old.render.iterations, 5);
    }

    #[test]
    fn a_renders_parameters_refuse_the_hints_by_name() {
        for key in HINTS {
            let e = RenderParams::from_json(&format!(r#"{{"{key}": 16}}"#)).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("how a render is run"), "{e}");
        }
        let e = Execution { tile: Some(8), ..Execution::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("tile") && e.contains("16 to 8192"), "{e}");
        let e = Execution { bit_depth: 12, ..Execution::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("bit_depth") && e.contains("8 or 16"), "{e}");
        Execution::default().validate().unwrap();
    }
}
