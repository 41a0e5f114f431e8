//! One render at one size as a pure step function: the loss terms and
//! their targets are built once in [`Renderer::new`]; [`Renderer::step`]
//! takes the state one optimizer iteration further and returns the losses
//! of the image it started from. [`crate::session`] strings renders of
//! several sizes together and adds resume, checkpoints and hooks.

use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::arch::conv_index;
use crate::colors::{self, ColorStats};
use crate::error::{invalid, EngineError, Result};
use crate::lbfgs::{Bounds, Lbfgs, LbfgsState, Objective};
use crate::loss::{blend_grams, evaluate_terms, gram, gram_f64, ContentLoss, Losses, Part, PartWeights, Reads, StyleLoss, TotalVariation, Weighted};
use crate::optim::{Adam, AdamState};
use crate::execution::Execution;
use crate::params::{Init, Optimizer, RenderParams};
use crate::pixels::PixelBox;
use crate::tiled::Tiled;
use crate::vgg::Vgg19;

/// Seconds spent in each phase of one gradient evaluation.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseTimes {
    /// VGG forward to the deepest layer a loss reads.
    pub forward: f64,
    /// Loss values and their gradients at the features.
    pub loss: f64,
    /// Backward through the network to the image (plus the TV gradient).
    pub backward: f64,
    /// The optimizer's update (Adam only; L-BFGS's is not split out).
    pub update: f64,
}

/// L-BFGS minimises a render's total and carries its parts along.
impl Objective for Losses {
    fn total(&self) -> f64 {
        self.total
    }
}

/// The optimizer's memory between iterations.
#[derive(Debug, Clone)]
pub enum OptimizerState {
    Adam(AdamState),
    Lbfgs(LbfgsState<Losses>),
}

/// Everything a render needs to continue: the image, the optimizer's state
/// and how far it got. (The init noise is the only randomness; it is drawn
/// before iteration 0, so no RNG state is carried.)
#[derive(Debug, Clone)]
pub struct RenderState {
    /// `[1, 3, H, W]` in the optimisation space.
    pub image: Tensor,
    pub optimizer: OptimizerState,
    /// Iterations done so far.
    pub iteration: usize,
}

/// A render's fixed parts: the network, the parameters, and the content and
/// style targets.
pub struct Renderer {
    vgg: Arc<Vgg19>,
    params: RenderParams,
    /// Convs to run: one past the deepest layer any loss reads.
    depth: usize,
    /// Content terms, then style terms, then TV: the order gradients that
    /// meet at one layer are added in.
    terms: Vec<Weighted>,
    adam: Adam,
    lbfgs: Lbfgs,
    /// The (blended) styles' colour statistics, for [`Init::Recolored`].
    style_colors: Option<ColorStats>,
    /// Tiled execution: the terms above evaluated tile by tile.
    tiled: Option<Tiled>,
    /// The pixel range every iterate stays in: what is optimised is what
    /// a PNG can hold.
    bounds: PixelBox,
}

impl Renderer {
    /// Validates `params` and computes the targets: the content features
    /// `P` and the (blended) style Gram matrices `A`, once.
    /// `content`: `[1, 3, H, W]`; `styles`: `[1, 3, H', W']` each (any size).
    pub fn new(vgg: Arc<Vgg19>, params: RenderParams, content: &Tensor, styles: &[Tensor]) -> Result<Self> {
        Self::with_execution(vgg, params, &Execution::default(), content, styles)
    }

    /// [`Renderer::new`], evaluated as `execution` says: tile by tile with
    /// `execution.tile`, the targets as well as the losses after them.
    pub fn with_execution(vgg: Arc<Vgg19>, params: RenderParams, execution: &Execution, content: &Tensor, styles: &[Tensor]) -> Result<Self> {
        params.validate(styles.len())?;
        execution.validate()?;
        let (content_layers, style_layers, depth) = params.active_layers()?;
        vgg.require_depth(depth)?;
        let tiled = match execution.tile {
            Some(tile) => Some(Tiled::new(vgg.clone(), depth, tile, execution.keep_tiles)?),
            None => None,
        };
        let blend = params.normalised_blend(styles.len());
        let style_colors = match params.init {
            Init::Recolored => {
                let parts = styles.iter().map(ColorStats::of).collect::<Result<Vec<_>>>()?;
                Some(ColorStats::mixture(&parts, &blend))
            }
            _ => None,
        };

        let mut terms = Vec::new();
        let content_convs = content_layers.iter().map(|l| Ok(conv_index(&l.layer)?)).collect::<Result<Vec<_>>>()?;
        let targets = match &tiled {
            Some(tiled) => tiled.features(content, &content_convs)?,
            None => {
                let acts = vgg.forward(content, depth)?;
                content_convs.iter().map(|&conv| acts.features[conv].clone()).collect()
            }
        };
        for ((lw, &conv), target) in content_layers.iter().zip(&content_convs).zip(targets) {
            terms.push(Weighted { part: Part::Content, reads: Reads::Layer(conv), weight: lw.weight, term: Box::new(ContentLoss::new(target)) });
        }
        let style_convs = style_layers.iter().map(|l| Ok(conv_index(&l.layer)?)).collect::<Result<Vec<_>>>()?;
        // Per style image, its Gram matrix at each style layer.
        let mut grams: Vec<Vec<Tensor>> = Vec::with_capacity(styles.len());
        for style in styles {
            grams.push(match &tiled {
                Some(tiled) => tiled.sums(style, &style_convs, |block, _| gram_f64(block))?,
                None => {
                    let acts = vgg.forward(style, depth)?;
                    style_convs.iter().map(|&conv| gram(&acts.features[conv])).collect::<Result<_>>()?
                }
            });
        }
        for (i, (lw, &conv)) in style_layers.iter().zip(&style_convs).enumerate() {
            let at_layer: Vec<Tensor> = grams.iter().map(|g| g[i].clone()).collect();
            let term = Box::new(StyleLoss::new(blend_grams(&at_layer, &blend)?)?);
            terms.push(Weighted { part: Part::Style, reads: Reads::Layer(conv), weight: lw.weight, term });
        }
        if params.tv_weight > 0.0 {
            terms.push(Weighted { part: Part::Tv, reads: Reads::Image, weight: 1.0, term: Box::new(TotalVariation) });
        }
        let (adam, lbfgs) = (Adam::new(params.lr), Lbfgs::new(params.lbfgs_history, params.lr));
        let bounds = PixelBox::new(content)?;
        Ok(Self { vgg, params, depth, terms, adam, lbfgs, style_colors, tiled, bounds })
    }

    /// Adds a loss term to the total, after the ones `params` asked for:
    /// untiled and tiled alike (a tiled render sums its statistic over the
    /// tiles). It may read the image or any layer up to the deepest the
    /// parameters' losses read.
    pub fn push_term(&mut self, term: Weighted) -> Result<()> {
        if let Reads::Layer(conv) = term.reads {
            if conv >= self.depth {
                return Err(invalid("layers", format!("the term reads {}, deeper than the {} convs this render runs", crate::arch::VGG19.get(conv).map_or("an unknown layer", |l| l.name), self.depth)));
            }
        }
        self.terms.push(term);
        Ok(())
    }

    pub fn params(&self) -> &RenderParams {
        &self.params
    }

    /// The terms the total sums, in order.
    pub fn terms(&self) -> &[Weighted] {
        &self.terms
    }

    /// The global weight of each part, `(α, β, tv_weight)`.
    pub fn weights(&self) -> PartWeights {
        PartWeights { content: self.params.alpha, style: self.params.beta, tv: self.params.tv_weight }
    }

    /// The starting image for `params.init`; `init_image` is required for
    /// [`Init::Image`] and must have the content's shape.
    pub fn initial_image(&self, content: &Tensor, init_image: Option<&Tensor>) -> Result<Tensor> {
        let noise = || -> Result<Tensor> {
            let mut rng = ChaCha8Rng::seed_from_u64(self.params.seed);
            let n = content.elem_count();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-20.0f32..20.0)).collect();
            Ok(Tensor::from_vec(v, content.shape(), content.device())?.to_dtype(content.dtype())?)
        };
        let blend = |picture: &Tensor| -> Result<Tensor> {
            let r = self.params.noise_ratio;
            Ok((noise()?.affine(r, 0.0)? + picture.affine(1.0 - r, 0.0)?)?)
        };
        match self.params.init {
            Init::Content => Ok(content.clone()),
            Init::Noise => noise(),
            Init::Blend => blend(content),
            Init::Recolored => {
                let to = self.style_colors.as_ref().ok_or_else(|| invalid("init", "`recolored` needs a style image"))?;
                blend(&colors::transfer(content, &ColorStats::of(content)?, to)?)
            }
            Init::Image => {
                let img = init_image.ok_or_else(|| invalid("init", "init `image` needs an image"))?;
                if img.shape() != content.shape() {
                    return Err(invalid("init", format!("init image {:?} does not match the content {:?}", img.dims(), content.dims())));
                }
                Ok(img.clone())
            }
        }
    }

    /// The state a render starts from.
    pub fn initial_state(&self, content: &Tensor, init_image: Option<&Tensor>) -> Result<RenderState> {
        self.state_from(self.initial_image(content, init_image)?)
    }

    /// A fresh state at `image` (a coarse stage's result, whatever
    /// `params.init` says), with a new optimizer memory. The image is
    /// brought inside the pixel range first (a noisy init, an upsampled
    /// coarse result may stray past it).
    pub fn state_from(&self, image: Tensor) -> Result<RenderState> {
        let image = self.bounds.project(&image)?;
        let optimizer = match self.params.optimizer {
            Optimizer::Adam => OptimizerState::Adam(AdamState::new(&image)?),
            Optimizer::Lbfgs => OptimizerState::Lbfgs(LbfgsState::new()),
        };
        Ok(RenderState { image, optimizer, iteration: 0 })
    }

    /// The losses of `image` and, if `with_grad`, the gradient of the total
    /// loss with respect to it; the time of each phase goes to `times`.
    fn losses(&self, image: &Tensor, with_grad: bool, times: &mut PhaseTimes) -> Result<(Losses, Option<Tensor>)> {
        let clock = Instant::now();
        let weights = self.weights();
        if let Some(tiled) = &self.tiled {
            // Forward, loss and backward interleave tile by tile: one time.
            let out = tiled.losses(&self.terms, weights, image, with_grad)?;
            times.forward = clock.elapsed().as_secs_f64();
            return Ok(out);
        }
        let acts = self.vgg.forward(image, self.depth)?;
        times.forward = clock.elapsed().as_secs_f64();

        let clock = Instant::now();
        let read = |reads| match reads {
            Reads::Layer(conv) => &acts.features[conv],
            Reads::Image => image,
        };
        let (losses, term_grads) = evaluate_terms(&self.terms, weights, read, with_grad)?;
        times.loss = clock.elapsed().as_secs_f64();
        if !with_grad {
            return Ok((losses, None));
        }

        let clock = Instant::now();
        // Sum only the gradients that exist: no zero tensors on the hot path.
        let mut at_layer: Vec<Option<Tensor>> = vec![None; self.depth];
        let mut at_image: Option<Tensor> = None;
        for (reads, g) in term_grads {
            let slot = match reads {
                Reads::Layer(conv) => &mut at_layer[conv],
                Reads::Image => &mut at_image,
            };
            *slot = Some(match slot.take() {
                Some(acc) => (acc + g)?,
                None => g,
            });
        }
        let network = if at_layer.iter().any(Option::is_some) { Some(self.vgg.backward(&acts, &at_layer)?) } else { None };
        let grad = match (network, at_image) {
            (Some(n), Some(t)) => (n + t)?,
            (Some(g), None) | (None, Some(g)) => g,
            (None, None) => image.zeros_like()?,
        };
        times.backward = clock.elapsed().as_secs_f64();
        Ok((losses, Some(grad)))
    }

    /// Losses of `image` and the gradient of the total loss with respect to it.
    pub fn loss_and_grad(&self, image: &Tensor) -> Result<(Losses, Tensor)> {
        Ok(self.loss_and_grad_timed(image)?.0)
    }

    /// [`Self::loss_and_grad`], also saying how long each phase took (for
    /// `farmctl bench`).
    pub fn loss_and_grad_timed(&self, image: &Tensor) -> Result<((Losses, Tensor), PhaseTimes)> {
        let mut times = PhaseTimes::default();
        let (losses, grad) = self.losses(image, true, &mut times)?;
        let grad = grad.ok_or_else(|| EngineError::Internal("the gradient was asked for but not computed".into()))?;
        Ok(((losses, grad), times))
    }

    /// Losses of `image` (forward pass only).
    pub fn evaluate(&self, image: &Tensor) -> Result<Losses> {
        Ok(self.losses(image, false, &mut PhaseTimes::default())?.0)
    }

    /// One optimizer iteration; returns the losses of the image before it.
    pub fn step(&self, state: &mut RenderState) -> Result<Losses> {
        Ok(self.step_timed(state)?.0)
    }

    /// [`Self::step`], also giving the phase times of its (last) gradient
    /// evaluation; the optimizer's own time is `update`.
    pub fn step_timed(&self, state: &mut RenderState) -> Result<(Losses, PhaseTimes)> {
        let mut times = PhaseTimes::default();
        let losses = match &mut state.optimizer {
            OptimizerState::Adam(adam) => {
                let ((losses, grad), t) = self.loss_and_grad_timed(&state.image)?;
                times = t;
                let clock = Instant::now();
                // Projected Adam: the update, then back inside the range.
                state.image = self.bounds.project(&self.adam.step(&state.image, &grad, adam)?)?;
                times.update = clock.elapsed().as_secs_f64();
                losses
            }
            OptimizerState::Lbfgs(lbfgs) => {
                let (image, losses) = self.lbfgs.step(&state.image, lbfgs, Some(&self.bounds), |x| {
                    let (out, t) = self.loss_and_grad_timed(x)?;
                    times = t;
                    Ok(out)
                })?;
                state.image = image;
                losses
            }
        };
        state.iteration += 1;
        Ok((losses, times))
    }

    /// Conv FLOPs of one step (forward plus input gradient) at `h`×`w`.
    pub fn step_flops(&self, h: usize, w: usize) -> f64 {
        2.0 * self.vgg.forward_flops(h, w, self.depth)
    }
}
