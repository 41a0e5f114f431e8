//! What a render is, without a tensor in sight: the parameters a user
//! types and their one validation, VGG-19's layer table, how a render is
//! run (tiling, kept tiles, bit depth) apart from what it is, the memory
//! model and the tile geometry it prices, and the loss records a render
//! reports. The engine computes with these; the coordinator validates and
//! prices a job with them without compiling the engine.
//!
//! From the leaf up (a module uses only those above it):
//! - [`error`]: the one error type, naming the key to fix;
//! - [`arch`]: VGG-19 described once (layer names, channels, pooling
//!   positions, torchvision indices);
//! - [`geometry`]: where a tiled render's tiles and their crops lie;
//! - [`losses`]: the losses of an image and the lines of the loss log;
//! - [`params`]: the render parameters, their defaults and validation;
//! - [`execution`]: how a render is run, and a farm job's parameters;
//! - [`memory`]: a render's peak memory, and the plan that fits a budget;
//! - [`variants`]: the keys a variant may set, and each variant's label.

pub mod arch;
pub mod error;
pub mod execution;
pub mod geometry;
pub mod losses;
pub mod memory;
pub mod params;
pub mod variants;

pub use error::{ParamError, Result};
pub use execution::{Execution, JobParams};
pub use losses::{LossRecord, Losses, Part};
pub use params::{Init, LayerWeight, Optimizer, Pooling, Preset, PreserveColors, RenderParams};
