//! Render parameters with the defaults of DESIGN.md, and their validation.
//!
//! Every number a user can type ends up here; [`RenderParams::validate`] is
//! the one place that says which values make sense.

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Result};
use crate::arch::conv_index;

/// Pooling between VGG blocks. Gatys et al. recommend average pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    #[default]
    Avg,
    Max,
}

/// The optimizer that updates the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// Adam with TensorFlow 1's rule; `lr` is its learning rate.
    #[default]
    Adam,
    /// L-BFGS with a backtracking line search; `lr` bounds the first step
    /// (in pixels), later steps are scaled by the curvature.
    Lbfgs,
}

/// How the optimised image starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// `noise_ratio·U(−20, 20) + (1 − noise_ratio)·content` (the assignment's).
    #[default]
    Blend,
    /// The content image itself.
    Content,
    /// `U(−20, 20)` noise around the mean colour.
    Noise,
    /// Pixels the caller supplies (an image file, resized to the render size).
    Image,
    /// The content recoloured to the style's colour statistics (mean and
    /// covariance, [`crate::colors`]), blended with `noise_ratio` of the
    /// seeded noise like `blend`: the fast preset's start.
    Recolored,
}

/// Colour preservation (Gatys, Bethge, Hertzmann, Shechtman 2016,
/// "Preserving Color in Neural Artistic Style Transfer"): the render keeps
/// the content photo's colours and takes only the painting's strokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreserveColors {
    /// Style transfer on luminance only: content and style rendered as
    /// their luminance (YIQ's Y; the style's matched to the content's mean
    /// and deviation), and the result's luminance recombined with the
    /// content's own colour channels (I, Q).
    Luminance,
    /// The style images recoloured to the content's colour statistics
    /// (mean and covariance, a linear transfer) before rendering.
    Histogram,
}

impl PreserveColors {
    pub const NAMES: [&'static str; 2] = ["luminance", "histogram"];
}

/// A VGG layer and the weight its loss term gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerWeight {
    pub layer: String,
    pub weight: f64,
}

impl LayerWeight {
    pub fn new(layer: &str, weight: f64) -> Self {
        Self { layer: layer.to_string(), weight }
    }
}

/// Everything that decides the result of a render, apart from the pixels.
///
/// Serialised (the farm's `variants_json`, a checkpoint's identity) with
/// `farmctl render`'s flag names (`-` as `_`, `iters` for `iterations`); a
/// missing key takes its default and an unknown key is refused by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RenderParams {
    /// Content loss weight α.
    pub alpha: f64,
    /// Style loss weight β.
    pub beta: f64,
    /// Total-variation loss weight (0 = off).
    pub tv_weight: f64,
    pub optimizer: Optimizer,
    /// Adam learning rate, in pixel units (0..255 scale); for L-BFGS the
    /// largest per-pixel move of the first step.
    pub lr: f64,
    /// L-BFGS history size (pairs of image-sized tensors kept).
    pub lbfgs_history: usize,
    /// Optimizer iterations (`--iters`; checkpoints written before the
    /// name changed say `iterations`).
    #[serde(rename = "iters", alias = "iterations")]
    pub iterations: usize,
    pub init: Init,
    /// Share of noise in the `blend` init, in [0, 1].
    pub noise_ratio: f64,
    /// Seed of the init noise.
    pub seed: u64,
    pub pooling: Pooling,
    pub content_layers: Vec<LayerWeight>,
    pub style_layers: Vec<LayerWeight>,
    /// Blend weights of the style images (one per style; empty = equal).
    pub style_blend: Vec<f64>,
    /// Coarse-to-fine: fractions of the render size (ascending, each in
    /// (0, 1)) rendered first, each stage starting from the previous one's
    /// result resampled; the full-size render then starts from the last.
    /// Empty: one full-size stage.
    pub scales: Vec<f64>,
    /// Iterations at each coarse scale (`None`: `iterations`).
    pub coarse_iters: Option<usize>,
    /// Colour preservation (`None`: the style's colours, as Gatys 2015).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preserve_colors: Option<PreserveColors>,
    /// Bits per channel of the PNGs the render writes: 8, or 16 to keep
    /// what rounding to 8 bits would lose. It does not change the render
    /// (a checkpoint resumes under either).
    #[serde(skip_serializing_if = "is_eight")]
    pub bit_depth: u8,
    /// Evaluate the losses tile by tile, tiles of this many pixels a side
    /// (rounded up to the deepest layer's pooling stride): the same
    /// losses and gradient as untiled, in the memory of one tile and its
    /// halo. It does not change the render (a checkpoint resumes under any
    /// tiling).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tile: Option<usize>,
    /// Tiled: how many tiles keep their activations from pass 1 for pass
    /// 2 (the last always does), each one forward pass fewer per step for
    /// its crop's activations in memory. Whoever knows the memory sets it
    /// ([`Self::most_tiles_kept`]); like `tile`, it changes how the losses
    /// are computed, not what they are.
    #[serde(skip_serializing_if = "is_zero")]
    pub keep_tiles: usize,
}

/// The largest tile side (a render's side is at most 8192 pixels).
pub const MAX_TILE: usize = 8192;

fn is_eight(bits: &u8) -> bool {
    *bits == 8
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Default for RenderParams {
    fn default() -> Self {
        Self {
            alpha: 0.01,
            beta: 1.0,
            tv_weight: 0.0,
            optimizer: Optimizer::Adam,
            lr: 2.0,
            lbfgs_history: 10,
            iterations: 300,
            init: Init::Blend,
            noise_ratio: 0.6,
            seed: 0,
            pooling: Pooling::Avg,
            content_layers: vec![LayerWeight::new("conv4_2", 1.0)],
            style_layers: vec![
                LayerWeight::new("conv1_1", 0.5),
                LayerWeight::new("conv2_1", 1.0),
                LayerWeight::new("conv3_1", 1.5),
                LayerWeight::new("conv4_1", 3.0),
                LayerWeight::new("conv5_1", 4.0),
            ],
            style_blend: Vec::new(),
            scales: Vec::new(),
            coarse_iters: None,
            preserve_colors: None,
            bit_depth: 8,
            tile: None,
            keep_tiles: 0,
        }
    }
}

/// A named set of parameters to start from; flags (or a variant's keys)
/// given beside it override its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The assignment's recipe: Adam, lr 2, 300 iterations from the blend
    /// init. The reference every other configuration is measured against.
    #[default]
    Recipe,
    /// As good as the recipe (style loss at or below its, content loss at
    /// most 10 % above: [`crate::quality`]) in a fraction of its time, on
    /// every sample pair (BENCHMARKS.md): L-BFGS, coarse-to-fine from the
    /// content recoloured to the style's colours.
    Fast,
}

impl Preset {
    pub const NAMES: [&'static str; 2] = ["recipe", "fast"];

    /// The parameters this preset stands for.
    pub fn params(self) -> RenderParams {
        match self {
            Preset::Recipe => RenderParams::default(),
            Preset::Fast => RenderParams {
                optimizer: Optimizer::Lbfgs,
                iterations: FAST_ITERS,
                init: Init::Recolored,
                noise_ratio: 0.1,
                scales: vec![0.5],
                coarse_iters: Some(FAST_COARSE_ITERS),
                ..RenderParams::default()
            },
        }
    }

    /// `recipe` or `fast`; anything else is refused naming the choices.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "recipe" => Ok(Preset::Recipe),
            "fast" => Ok(Preset::Fast),
            other => Err(invalid("preset", format!("`{other}` is not a preset; choose one of {}", Preset::NAMES.join(", ")))),
        }
    }
}

/// The fast preset's full-size and coarse (half-size) iterations.
const FAST_ITERS: usize = 55;
const FAST_COARSE_ITERS: usize = 30;

/// The most iterations one render may ask for; more is a typo, not a plan.
pub const MAX_ITERATIONS: usize = 1_000_000;

fn finite_non_negative(name: &'static str, v: f64) -> Result<()> {
    if !v.is_finite() {
        return Err(invalid(name, format!("{v} is not a finite number")));
    }
    if v < 0.0 {
        return Err(invalid(name, format!("{v} is negative; it must be ≥ 0")));
    }
    Ok(())
}

/// The most coarse-to-fine scales one render may ask for: each halves the
/// work at most, so more than a few is a mistake, and a bounded list keeps
/// a job's parameters small on the wire.
pub const MAX_SCALES: usize = 8;

/// Each of VGG-19's 16 conv layers at most once: a list can be no longer.
fn check_layers(name: &'static str, layers: &[LayerWeight]) -> Result<()> {
    if layers.len() > crate::arch::VGG19.len() {
        return Err(invalid(name, format!("{} layers given; VGG-19 has {} conv layers, each usable once", layers.len(), crate::arch::VGG19.len())));
    }
    for (i, lw) in layers.iter().enumerate() {
        conv_index(&lw.layer)?;
        if layers[..i].iter().any(|earlier| earlier.layer == lw.layer) {
            return Err(invalid(name, format!("layer {} is listed twice; give it once with the summed weight", lw.layer)));
        }
        finite_non_negative(name, lw.weight)
            .map_err(|_| invalid(name, format!("weight {} of layer {} must be finite and ≥ 0", lw.weight, lw.layer)))?;
    }
    Ok(())
}

impl RenderParams {
    /// Checks every parameter; the error names the first one that is wrong.
    pub fn validate(&self, n_styles: usize) -> Result<()> {
        finite_non_negative("alpha", self.alpha)?;
        finite_non_negative("beta", self.beta)?;
        finite_non_negative("tv_weight", self.tv_weight)?;
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(invalid("lr", format!("{} must be a finite number > 0", self.lr)));
        }
        if !(1..=1000).contains(&self.lbfgs_history) {
            return Err(invalid("lbfgs_history", format!("{} must be between 1 and 1000", self.lbfgs_history)));
        }
        if self.iterations > MAX_ITERATIONS {
            return Err(invalid("iters", format!("{} is more than the limit of {MAX_ITERATIONS}", self.iterations)));
        }
        if self.scales.len() > MAX_SCALES {
            return Err(invalid("scales", format!("{} scales given; at most {MAX_SCALES}", self.scales.len())));
        }
        if self.scales.iter().any(|s| !(s.is_finite() && *s > 0.0 && *s < 1.0)) || self.scales.windows(2).any(|p| p[0] >= p[1]) {
            return Err(invalid(
                "scales",
                format!("--scales {:?}: each must lie in (0, 1), in ascending order (the full size comes last by itself)", self.scales),
            ));
        }
        if self.coarse_iters.is_some_and(|n| n > MAX_ITERATIONS) {
            return Err(invalid("coarse_iters", format!("{:?} is more than the limit of {MAX_ITERATIONS}", self.coarse_iters)));
        }
        if self.tile.is_some_and(|t| !(16..=crate::params::MAX_TILE).contains(&t)) {
            return Err(invalid("tile", format!("{:?} pixels: a tile is 16 to {MAX_TILE} pixels a side", self.tile)));
        }
        if !matches!(self.bit_depth, 8 | 16) {
            return Err(invalid("bit_depth", format!("{} bits: a PNG here has 8 or 16 bits per channel", self.bit_depth)));
        }
        if !(self.noise_ratio.is_finite() && (0.0..=1.0).contains(&self.noise_ratio)) {
            return Err(invalid("noise_ratio", format!("{} must lie in [0, 1]", self.noise_ratio)));
        }
        if self.alpha == 0.0 && self.beta == 0.0 && self.tv_weight == 0.0 {
            return Err(invalid("alpha", "alpha, beta and tv_weight are all 0: there is nothing to optimise"));
        }
        if self.alpha > 0.0 && self.content_layers.is_empty() {
            return Err(invalid("content_layers", "alpha > 0 needs at least one content layer"));
        }
        if self.beta > 0.0 && self.style_layers.is_empty() {
            return Err(invalid("style_layers", "beta > 0 needs at least one style layer"));
        }
        check_layers("content_layers", &self.content_layers)?;
        check_layers("style_layers", &self.style_layers)?;
        if !self.style_blend.is_empty() {
            if self.style_blend.len() != n_styles {
                return Err(invalid(
                    "style_blend",
                    format!("{} blend weights given for {n_styles} style images", self.style_blend.len()),
                ));
            }
            for &w in &self.style_blend {
                finite_non_negative("style_blend", w)?;
            }
            if self.style_blend.iter().sum::<f64>() <= 0.0 {
                return Err(invalid("style_blend", "the blend weights sum to 0"));
            }
        }
        if self.beta > 0.0 && n_styles == 0 {
            return Err(invalid("style", "beta > 0 needs at least one style image"));
        }
        Ok(())
    }

    /// Reads parameters in their wire form (a JSON object; missing keys
    /// take their defaults, or a `"preset"`'s values when one is named).
    /// The error names the key that is wrong, an unknown one included, and
    /// what was expected.
    pub fn from_json(json: &str) -> Result<Self> {
        let schema = |key: &str, reason: String| crate::error::EngineError::ParamSchema { key: key.to_string(), reason };
        let mut value: serde_json::Value = serde_json::from_str(json).map_err(|e| schema("parameters", e.to_string()))?;
        if let Some(obj) = value.as_object_mut() {
            if let Some(name) = obj.remove("preset") {
                let name = name.as_str().ok_or_else(|| schema("preset", format!("{name} is not a preset name; choose one of {}", Preset::NAMES.join(", "))))?;
                let preset = Preset::parse(name).map_err(|e| schema("preset", e.to_string()))?;
                let base = serde_json::to_value(preset.params()).map_err(|e| schema("preset", e.to_string()))?;
                let mut merged = base.as_object().cloned().unwrap_or_default();
                if obj.contains_key("iterations") {
                    merged.remove("iters");
                }
                merged.extend(std::mem::take(obj));
                value = serde_json::Value::Object(merged);
            }
        }
        serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "parameters".to_string() } else { key };
            crate::error::EngineError::ParamSchema { key, reason: e.into_inner().to_string() }
        })
    }

    /// The layers the losses read — the content layers when α > 0, the
    /// style layers when β > 0 — and how many convs reach the deepest.
    pub fn active_layers(&self) -> Result<(Vec<LayerWeight>, Vec<LayerWeight>, usize)> {
        let content = if self.alpha > 0.0 { self.content_layers.clone() } else { Vec::new() };
        let style = if self.beta > 0.0 { self.style_layers.clone() } else { Vec::new() };
        let mut depth = 0;
        for lw in content.iter().chain(&style) {
            depth = depth.max(conv_index(&lw.layer)? + 1);
        }
        Ok((content, style, depth))
    }

    /// A first-order estimate of a render's peak memory at `width`×`height`
    /// on the CPU engine, in bytes: a fixed part (weights, runtime) plus,
    /// per pixel, the feature maps of every layer up to the deepest one a
    /// loss reads (kept for the backward pass, ≈2.2× with their gradients
    /// and temporaries: fitted to the peaks `farmctl bench` measured, 712,
    /// 1693, 3212 and 5497 MiB at 333×250, 800×600, 1200×900 and
    /// 1920×1080), plus L-BFGS's history. `farmctl render` refuses with it
    /// before it starts, and the farm at submit and when leasing.
    pub fn estimated_peak_bytes(&self, width: u32, height: u32) -> u64 {
        const FIXED: f64 = 512.0 * 1024.0 * 1024.0;
        const PER_FEATURE: f64 = 4.0 * 2.2;
        // A kept tile's activations: its feature maps alone.
        const KEPT_PER_FEATURE: f64 = 4.0;
        let deepest = self.deepest_conv();
        // Feature values per input pixel: each layer's channels over the
        // 4^(block-1) by which pooling has shrunk its map.
        let per_pixel: f64 = crate::arch::VGG19[..=deepest].iter().map(|l| l.out_channels as f64 / 4f64.powi(l.block as i32 - 1)).sum();
        let pixels = width as f64 * height as f64;
        let history = match self.optimizer {
            Optimizer::Lbfgs => 2.0 * self.lbfgs_history as f64 * 3.0 * 4.0,
            Optimizer::Adam => 3.0 * 3.0 * 4.0,
        };
        let Some(tile) = self.tile else {
            return (FIXED + pixels * (per_pixel * PER_FEATURE + history)) as u64;
        };
        // Tiled: at full size the image-sized buffers (below), the
        // optimizer's history and the content target's features; then the worst moment of pass 2 (which runs
        // the tiles in reverse): one crop's feature maps and its backward's,
        // beside the activations still kept for the tiles before it.
        let reach = crate::tiled::Reach::of(deepest + 1);
        let content: f64 = self
            .content_layers
            .iter()
            .filter_map(|l| conv_index(&l.layer).ok())
            .map(|i| crate::arch::VGG19[i].out_channels as f64 / 4f64.powi(crate::arch::VGG19[i].block as i32 - 1) * 4.0)
            .sum();
        let (h, w) = (height as usize, width as usize);
        let mut kept = 0f64;
        let mut worst = 0f64;
        for (i, (ch, cw)) in crate::tiled::crop_sizes(h, w, tile, reach).into_iter().enumerate() {
            // A crop's maps, and its scratch a stride wider where the crop
            // ends inside the image.
            let current = (ch + reach.align).min(h) as f64 * (cw + reach.align).min(w) as f64;
            worst = worst.max(current * per_pixel * PER_FEATURE + kept);
            if i < self.keep_tiles {
                kept += (ch * cw) as f64 * per_pixel * KEPT_PER_FEATURE;
            }
        }
        // Image-sized: the image, the gradient being summed, a tile's
        // gradient padded to the image, their sum.
        (FIXED + worst + pixels * (history + content + 4.0 * 3.0 * 4.0)) as u64
    }

    /// With `tile`: the most tiles [`Self::keep_tiles`] may keep for the
    /// render at `width`×`height` to stay within `budget` bytes (0 when
    /// untiled, or when not even one more fits).
    pub fn most_tiles_kept(&self, width: u32, height: u32, budget: u64) -> usize {
        let Some(tile) = self.tile else { return 0 };
        let reach = crate::tiled::Reach::of(self.deepest_conv() + 1);
        let tiles = crate::tiled::crop_sizes(height as usize, width as usize, tile, reach).len();
        let fits = |k: usize| RenderParams { keep_tiles: k, ..self.clone() }.estimated_peak_bytes(width, height) <= budget;
        // The peak grows with k: the largest k that fits, by bisection.
        let (mut lo, mut hi) = (0, tiles.saturating_sub(1));
        if !fits(0) {
            return 0;
        }
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    /// The deepest conv any of the layers names (the memory model's view:
    /// every layer, weighted or not).
    fn deepest_conv(&self) -> usize {
        self.content_layers.iter().chain(&self.style_layers).filter_map(|l| conv_index(&l.layer).ok()).max().unwrap_or(0)
    }

    /// The largest tile side (a multiple of 16) whose render at
    /// `width`×`height` fits `budget` bytes by [`Self::estimated_peak_bytes`];
    /// `None` when not even 16 does.
    pub fn largest_fitting_tile(&self, width: u32, height: u32, budget: u64) -> Option<usize> {
        let fits = |t: usize| RenderParams { tile: Some(t), ..self.clone() }.estimated_peak_bytes(width, height) <= budget;
        let largest = (width.max(height) as usize).div_ceil(16) * 16;
        (1..=largest / 16).rev().map(|k| 16 * k).find(|&t| fits(t))
    }

    /// Iterations of each coarse stage.
    pub fn coarse_iterations(&self) -> usize {
        self.coarse_iters.unwrap_or(self.iterations)
    }

    /// Blend weights normalised to sum to 1, one per style image.
    pub fn normalised_blend(&self, n_styles: usize) -> Vec<f64> {
        if self.style_blend.is_empty() {
            return vec![1.0 / n_styles.max(1) as f64; n_styles];
        }
        let sum: f64 = self.style_blend.iter().sum();
        self.style_blend.iter().map(|w| w / sum).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_preservation_and_bit_depth_are_parameters_left_out_at_their_defaults() {
        let p = RenderParams::from_json(r#"{"preserve_colors": "luminance", "bit_depth": 16}"#).unwrap();
        assert_eq!((p.preserve_colors, p.bit_depth), (Some(PreserveColors::Luminance), 16));
        p.validate(1).unwrap();
        let e = RenderParams::from_json(r#"{"preserve_colors": "sepia"}"#).unwrap_err().to_string();
        assert!(e.contains("preserve_colors") && e.contains("luminance"), "{e}");
        let e = RenderParams { bit_depth: 12, ..RenderParams::default() }.validate(1).unwrap_err().to_string();
        assert!(e.contains("bit_depth") && e.contains("8 or 16"), "{e}");
        // At their defaults they are not written, so every checkpoint and
        // variant written before they existed reads the same.
        let json = serde_json::to_string(&RenderParams::default()).unwrap();
        assert!(!json.contains("preserve_colors") && !json.contains("bit_depth"), "{json}");
        assert_eq!(RenderParams::from_json(&json).unwrap(), RenderParams::default());
    }

    #[test]
    fn defaults_are_the_assignments_and_valid() {
        let p = RenderParams::default();
        assert_eq!((p.alpha, p.beta, p.lr, p.iterations, p.noise_ratio), (0.01, 1.0, 2.0, 300, 0.6));
        let w: Vec<f64> = p.style_layers.iter().map(|l| l.weight).collect();
        assert_eq!(w, [0.5, 1.0, 1.5, 3.0, 4.0]);
        p.validate(1).unwrap();
    }

    #[test]
    fn the_wire_form_uses_the_flag_names_and_refuses_unknown_keys() {
        let p: RenderParams = serde_json::from_str(r#"{"iters": 7, "tv_weight": 1.5}"#).unwrap();
        assert_eq!((p.iterations, p.tv_weight), (7, 1.5));
        assert!(serde_json::to_string(&p).unwrap().contains("\"iters\":7"));
        let old: RenderParams = serde_json::from_str(r#"{"iterations": 9}"#).unwrap();
        assert_eq!(old.iterations, 9, "checkpoints written before the rename still read");
        let err = RenderParams::from_json(r#"{"alhpa": 1}"#).unwrap_err().to_string();
        assert!(err.contains("alhpa"), "{err}");
        let err = RenderParams::from_json(r#"{"iters": -3}"#).unwrap_err().to_string();
        assert!(err.contains("iters"), "a wrong value names its key: {err}");
        assert_eq!(RenderParams::from_json(r#"{"seed": 4}"#).unwrap().seed, 4);
    }

    #[test]
    fn a_preset_is_where_the_other_keys_start() {
        assert_eq!(RenderParams::from_json(r#"{"preset": "recipe"}"#).unwrap(), RenderParams::default());
        let fast = RenderParams::from_json(r#"{"preset": "fast"}"#).unwrap();
        assert_eq!(fast, Preset::Fast.params());
        assert_eq!((fast.optimizer, &fast.init, fast.scales.as_slice()), (Optimizer::Lbfgs, &Init::Recolored, &[0.5][..]));
        fast.validate(1).unwrap();
        // Keys beside the preset win, under either name of `iters`.
        let mine = RenderParams::from_json(r#"{"preset": "fast", "iters": 80, "seed": 3}"#).unwrap();
        assert_eq!((mine.iterations, mine.seed, mine.optimizer), (80, 3, Optimizer::Lbfgs));
        assert_eq!(RenderParams::from_json(r#"{"iterations": 7, "preset": "fast"}"#).unwrap().iterations, 7);
        for (json, needle) in [(r#"{"preset": "turbo"}"#, "turbo"), (r#"{"preset": 3}"#, "preset"), (r#"{"preset": "fast", "alhpa": 1}"#, "alhpa")] {
            let err = RenderParams::from_json(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
        assert!(Preset::parse("turbo").unwrap_err().to_string().contains("recipe, fast"), "the choices are named");
    }

    #[test]
    fn the_memory_estimate_is_near_the_measured_peaks_and_grows_with_pixels() {
        let p = RenderParams::default();
        let mib = |w, h| p.estimated_peak_bytes(w, h) as f64 / (1u64 << 20) as f64;
        // Measured peaks (`farmctl bench`, BENCHMARKS.md), within 10%.
        for (w, h, measured) in [(333, 250, 712.0), (800, 600, 1693.0), (1200, 900, 3212.0), (1920, 1080, 5497.0)] {
            assert!((mib(w, h) - measured).abs() < 0.10 * measured, "{w}x{h}: model {} MiB, measured {measured}", mib(w, h));
        }
        assert!(mib(8192, 8192) > 100_000.0, "an 8K square needs far more than any device has");
        // Tiled, the feature maps are one crop's: 4K in a few GiB.
        let tiled = RenderParams { tile: Some(512), ..p.clone() };
        assert!(tiled.estimated_peak_bytes(3840, 2160) < 8 << 30 && p.estimated_peak_bytes(3840, 2160) > 16 << 30);
        assert!(tiled.estimated_peak_bytes(800, 600) <= p.estimated_peak_bytes(800, 600) + (64 << 20), "a tile larger than the image costs about what untiled does");
        let t = p.largest_fitting_tile(3840, 2160, 8 << 30).unwrap();
        assert_eq!(t % 16, 0);
        assert!(RenderParams { tile: Some(t), ..p.clone() }.estimated_peak_bytes(3840, 2160) <= 8 << 30);
        assert!(RenderParams { tile: Some(t + 16), ..p.clone() }.estimated_peak_bytes(3840, 2160) > 8 << 30);
        // Measured tiled peaks at 1920x1080 (`farmctl bench --tile`), within
        // 10%: tiles of 1024 keeping none of the 4 or 3, tiles of 512.
        for (tile, keep_tiles, measured) in [(1024, 0, 3771.0), (1024, 3, 4848.0), (512, 0, 1748.0)] {
            let q = RenderParams { tile: Some(tile), keep_tiles, ..p.clone() };
            let model = q.estimated_peak_bytes(1920, 1080) as f64 / (1u64 << 20) as f64;
            assert!((model - measured).abs() < 0.10 * measured, "tile {tile}, keep {keep_tiles}: model {model} MiB, measured {measured}");
        }
    }

    #[test]
    fn tiles_are_kept_as_far_as_the_budget_goes() {
        let p = RenderParams { tile: Some(512), ..RenderParams::default() };
        let peak = |keep_tiles| RenderParams { keep_tiles, ..p.clone() }.estimated_peak_bytes(3840, 2160);
        // 8 × 5 tiles: each kept one costs memory, the last one nothing more.
        assert!(peak(1) > peak(0) && peak(20) > peak(10));
        assert_eq!(peak(39), peak(1000));
        let budget = peak(10) + (peak(11) - peak(10)) / 2;
        assert_eq!(p.most_tiles_kept(3840, 2160, budget), 10);
        assert_eq!(p.most_tiles_kept(3840, 2160, u64::MAX), 39, "all but the last, which is always kept");
        assert_eq!(p.most_tiles_kept(3840, 2160, peak(0) - 1), 0, "not even untiled-kept fits");
        assert_eq!(RenderParams::default().most_tiles_kept(3840, 2160, u64::MAX), 0, "untiled");
    }

    #[test]
    fn nonsense_is_refused_by_name() {
        let cases: Vec<(RenderParams, &str)> = vec![
            (RenderParams { alpha: f64::NAN, ..Default::default() }, "alpha"),
            (RenderParams { beta: -1.0, ..Default::default() }, "beta"),
            (RenderParams { lr: 0.0, ..Default::default() }, "lr"),
            (RenderParams { lbfgs_history: 0, ..Default::default() }, "lbfgs_history"),
            (RenderParams { noise_ratio: 1.5, ..Default::default() }, "noise_ratio"),
            (RenderParams { tv_weight: f64::INFINITY, ..Default::default() }, "tv_weight"),
            (RenderParams { style_layers: vec![LayerWeight::new("conv1_1", f64::NAN)], ..Default::default() }, "style_layers"),
            (RenderParams { content_layers: vec![LayerWeight::new("conv9_9", 1.0)], ..Default::default() }, "conv9_9"),
            (RenderParams { style_blend: vec![1.0, 2.0], ..Default::default() }, "style_blend"),
            (RenderParams { scales: vec![0.5, 0.25], ..Default::default() }, "scales"),
            (RenderParams { scales: vec![1.0], ..Default::default() }, "scales"),
            (RenderParams { coarse_iters: Some(usize::MAX), ..Default::default() }, "coarse_iters"),
            // Lists are bounded, so a job's parameters stay small on the wire.
            (RenderParams { content_layers: vec![LayerWeight::new("conv4_2", 1.0); 2], ..Default::default() }, "listed twice"),
            (RenderParams { style_layers: vec![LayerWeight::new("conv1_1", 1.0); 17], ..Default::default() }, "17 layers given"),
            (RenderParams { scales: (1..=9).map(|i| i as f64 / 10.0).collect(), ..Default::default() }, "9 scales given"),
        ];
        for (p, needle) in cases {
            let err = p.validate(1).unwrap_err().to_string();
            assert!(err.contains(needle), "error `{err}` should name `{needle}`");
        }
    }
}
