//! Render parameters with the defaults of DESIGN.md, and their validation.
//!
//! Every number a user can type about *what* a render is ends up here;
//! [`RenderParams::validate`] is the one place that says which values make
//! sense. How a render is run (tiles, kept tiles, the PNGs' bit depth) is
//! [`crate::execution::Execution`]; what it costs in memory,
//! [`crate::memory`].

use serde::{Deserialize, Serialize};

use crate::arch::conv_index;
use crate::error::{invalid, ParamError, Result};

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
    /// covariance: the engine's `colors`), blended with `noise_ratio` of the
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

/// Everything that decides the result of a render, apart from the pixels:
/// its identity (with the inputs and the size), which a checkpoint records.
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
    /// most 10 % above: the engine's `quality`) in a fraction of its time, on
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

/// The keys of how a render is run ([`crate::execution::Execution`]),
/// refused among its parameters by name.
pub const HINTS: [&str; 3] = ["tile", "keep_tiles", "bit_depth"];

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
        let schema = |key: &str, reason: String| ParamError::Schema { key: key.to_string(), reason };
        let mut value: serde_json::Value = serde_json::from_str(json).map_err(|e| schema("parameters", e.to_string()))?;
        if let Some(obj) = value.as_object_mut() {
            if let Some(key) = HINTS.iter().find(|k| obj.contains_key(**k)) {
                return Err(schema(key, "is how a render is run, not what it is; it is not one of the render's parameters (give it to `farmctl render` as a flag; a farm worker decides its own tiling)".into()));
            }
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
            ParamError::Schema { key, reason: crate::error::plain(&e.into_inner().to_string()) }
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

    /// The deepest conv any of the layers names (the memory model's view:
    /// every layer, weighted or not).
    pub fn deepest_conv(&self) -> usize {
        self.content_layers.iter().chain(&self.style_layers).filter_map(|l| conv_index(&l.layer).ok()).max().unwrap_or(0)
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
    fn colour_preservation_is_a_parameter_left_out_at_its_default() {
        let p = RenderParams::from_json(r#"{"preserve_colors": "luminance"}"#).unwrap();
        assert_eq!(p.preserve_colors, Some(PreserveColors::Luminance));
        p.validate(1).unwrap();
        let e = RenderParams::from_json(r#"{"preserve_colors": "sepia"}"#).unwrap_err().to_string();
        assert!(e.contains("preserve_colors") && e.contains("luminance"), "{e}");
        // At its default it is not written, so every checkpoint and variant
        // written before it existed reads the same.
        let json = serde_json::to_string(&RenderParams::default()).unwrap();
        assert!(!json.contains("preserve_colors"), "{json}");
        assert_eq!(RenderParams::from_json(&json).unwrap(), RenderParams::default());
    }

    /// A value of the wrong kind is refused in a user's words, naming the
    /// key and what it takes, never Rust's type names.
    #[test]
    fn a_wrong_value_says_what_the_key_takes() {
        let said = |json: &str| RenderParams::from_json(json).unwrap_err().to_string();
        let table = [
            (r#"{"beta": "abc"}"#, "parameter `beta`: \"abc\" is not a number"),
            (r#"{"optimizer": "sgd"}"#, "parameter `optimizer`: sgd is not adam or lbfgs"),
            (r#"{"iters": -3}"#, "parameter `iters`: -3 is not a whole number, 0 or more"),
            (r#"{"seed": true}"#, "parameter `seed`: true is not a whole number, 0 or more"),
        ];
        for (json, want) in table {
            assert_eq!(said(json), want, "{json}");
        }
        let unknown = said(r#"{"betta": 5}"#);
        assert!(unknown.contains("betta is not a parameter") && unknown.contains("beta"), "{unknown}");
        for json in [r#"{"beta": "abc"}"#, r#"{"iters": 1.5}"#, r#"{"betta": 5}"#, r#"{"lr": [1]}"#] {
            let e = said(json);
            assert!(!["f64", "u64", "usize", "invalid type", "`, expected"].iter().any(|w| e.contains(w)), "{json}: {e}");
        }
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
