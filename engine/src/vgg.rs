//! VGG-19's convolutional part (16 convs, 5 blocks), run only as deep as the
//! deepest layer a render asks for, with its backward pass to the image.

use candle_core::{DType, Tensor};

use crate::arch::{pool_after, pooled, VGG19};
use crate::error::{EngineError, Result};
use crate::layers::{self, ConvRelu};
use crate::params::Pooling;
use crate::weights::{InputConvention, VggWeights};

/// What one forward pass keeps for the backward pass and the losses.
pub struct Activations {
    /// Post-ReLU output of each conv that ran, in network order,
    /// channels-last: `[1, H, W, C]`.
    pub features: Vec<Tensor>,
    /// Input of each pooling layer that ran (for its backward).
    pool_inputs: Vec<Tensor>,
    /// Output of each pooling layer that ran, kept for max pooling's
    /// backward only (average pooling's needs just the input's size).
    pool_outputs: Vec<Tensor>,
}

/// The network: its layers, its pooling and the input convention of its
/// weights.
pub struct Vgg19 {
    convs: Vec<ConvRelu>,
    pooling: Pooling,
    input: InputAdapter,
}

impl Vgg19 {
    /// Builds the network from weights, converting them to `dtype` on the
    /// weights' device. Accepts any channel widths that chain (tests use a
    /// narrow VGG); [`VggWeights::check_vgg19_shapes`] checks the real ones.
    pub fn new(weights: &VggWeights, pooling: Pooling, dtype: DType) -> Result<Self> {
        let mut convs = Vec::with_capacity(16);
        let mut channels = 3;
        for (i, (w, b)) in weights.layers.iter().enumerate() {
            let conv = ConvRelu::new(w.to_dtype(dtype)?, b.to_dtype(dtype)?)?;
            if conv.in_channels() != channels {
                return Err(EngineError::Weights(format!(
                    "{} takes {} channels but the layer before gives {channels}",
                    VGG19.get(i).map_or("conv?", |l| l.name),
                    conv.in_channels()
                )));
            }
            channels = conv.out_channels();
            convs.push(conv);
        }
        let device = weights.layers.first().map(|(w, _)| w.device().clone()).unwrap_or(candle_core::Device::Cpu);
        let input = InputAdapter::new(weights.convention, dtype, &device)?;
        Ok(Self { convs, pooling, input })
    }

    /// How many convs the weights provide.
    pub fn depth(&self) -> usize {
        self.convs.len()
    }

    /// Refuses a render whose layers need more convs than the weights have.
    pub fn require_depth(&self, depth: usize) -> Result<()> {
        if depth > self.convs.len() {
            return Err(crate::error::invalid("layers", format!("the layers asked for need {depth} convs; the weights have {}", self.convs.len())));
        }
        Ok(())
    }

    /// Runs the first `depth` convs (and the pools between them) on `image`,
    /// `[1, 3, H, W]` in the optimisation space (BGR, 0..255, mean removed).
    pub fn forward(&self, image: &Tensor, depth: usize) -> Result<Activations> {
        if depth > self.convs.len() {
            return Err(EngineError::Weights(format!("the weights have {} conv layers; {depth} are needed", self.convs.len())));
        }
        let mut acts = Activations { features: Vec::with_capacity(depth), pool_inputs: Vec::new(), pool_outputs: Vec::new() };
        // The network runs channels-last ([1, H, W, C]); the image is [1, 3, H, W].
        let mut x = self.input.forward(image)?.permute((0, 2, 3, 1))?.contiguous()?;
        for (i, conv) in self.convs[..depth].iter().enumerate() {
            if i > 0 && pool_after(i - 1) {
                let pooled = match self.pooling {
                    Pooling::Avg => layers::avg_pool(&x)?,
                    Pooling::Max => layers::max_pool(&x)?,
                };
                acts.pool_inputs.push(x);
                if self.pooling == Pooling::Max {
                    acts.pool_outputs.push(pooled.clone());
                }
                x = pooled;
            }
            x = conv.forward(&x)?;
            acts.features.push(x.clone());
        }
        Ok(acts)
    }

    /// The gradient with respect to the image, given the gradient of the
    /// loss at each conv's output (`None` where no loss reads that layer).
    pub fn backward(&self, acts: &Activations, grad_features: &[Option<Tensor>]) -> Result<Tensor> {
        let depth = acts.features.len();
        let mut grad: Option<Tensor> = None;
        let mut pool = acts.pool_inputs.len();
        for i in (0..depth).rev() {
            if let Some(g) = grad_features.get(i).and_then(Option::as_ref) {
                grad = Some(match grad {
                    Some(acc) => (acc + g)?,
                    None => g.clone(),
                });
            }
            let Some(g) = grad.take() else { continue };
            let mut g = self.convs[i].backward(&acts.features[i], &g)?;
            if i > 0 && pool_after(i - 1) {
                pool -= 1;
                let input = &acts.pool_inputs[pool];
                g = match self.pooling {
                    Pooling::Avg => {
                        let (_, h, w, _) = input.dims4()?;
                        layers::avg_pool_backward(&g, h, w)?
                    }
                    Pooling::Max => layers::max_pool_backward(input, &acts.pool_outputs[pool], &g)?,
                };
            }
            grad = Some(g);
        }
        match grad {
            Some(g) => self.input.backward(&g.permute((0, 3, 1, 2))?.contiguous()?),
            None => Err(EngineError::Internal("backward called with no loss gradient".into())),
        }
    }

    /// FLOPs of the convolutions of one forward pass at `h`×`w` through the
    /// first `depth` convs (direct-convolution count: 2·9·C_in·C_out·H·W).
    pub fn forward_flops(&self, h: usize, w: usize, depth: usize) -> f64 {
        let (mut h, mut w) = (h, w);
        let mut total = 0.0;
        for (i, conv) in self.convs[..depth].iter().enumerate() {
            if i > 0 && pool_after(i - 1) {
                h = pooled(h);
                w = pooled(w);
            }
            total += conv.flops(h, w);
        }
        total
    }
}

/// Maps the optimisation space (Caffe's: BGR, 0..255, mean removed) to the
/// space the weights expect. Identity for the original VGG weights.
struct InputAdapter {
    /// `None` for Caffe-convention weights; otherwise per-channel scale and
    /// shift `[1, 3, 1, 1]` applied after swapping B and R.
    affine: Option<(Tensor, Tensor)>,
}

const CAFFE_MEAN_BGR: [f64; 3] = crate::pixels::MEAN_BGR;

impl InputAdapter {
    fn new(convention: InputConvention, dtype: DType, device: &candle_core::Device) -> Result<Self> {
        let affine = match convention {
            InputConvention::CaffeBgr => None,
            InputConvention::TorchvisionRgb => {
                // rgb01 = (x_bgr[2-c] + mean_bgr[2-c]) / 255; net = (rgb01 − m_c) / s_c
                const M: [f64; 3] = [0.485, 0.456, 0.406];
                const S: [f64; 3] = [0.229, 0.224, 0.225];
                let scale: Vec<f64> = (0..3).map(|c| 1.0 / (255.0 * S[c])).collect();
                let shift: Vec<f64> = (0..3).map(|c| (CAFFE_MEAN_BGR[2 - c] / 255.0 - M[c]) / S[c]).collect();
                let scale = Tensor::from_vec(scale, (1, 3, 1, 1), device)?.to_dtype(dtype)?;
                let shift = Tensor::from_vec(shift, (1, 3, 1, 1), device)?.to_dtype(dtype)?;
                Some((scale, shift))
            }
        };
        Ok(Self { affine })
    }

    fn swap_b_r(x: &Tensor) -> Result<Tensor> {
        let idx = Tensor::new(&[2u32, 1, 0], x.device())?;
        Ok(x.index_select(&idx, 1)?)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.affine {
            None => Ok(x.clone()),
            Some((scale, shift)) => Ok(Self::swap_b_r(x)?.broadcast_mul(scale)?.broadcast_add(shift)?),
        }
    }

    fn backward(&self, g: &Tensor) -> Result<Tensor> {
        match &self.affine {
            None => Ok(g.clone()),
            Some((scale, _)) => Self::swap_b_r(&g.broadcast_mul(scale)?),
        }
    }
}
