//! The render flags shared by `farmctl render` and `farmctl submit`, and
//! their parsers: one definition, so a farm job takes every flag a local
//! render does.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use stylefarm_engine::{Execution, Init, LayerWeight, Optimizer, Pooling, Preset, PreserveColors, RenderParams};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PoolingArg {
    Avg,
    Max,
}

/// The flags that become a render's [`RenderParams`], one definition for
/// `render` and `submit`.
#[derive(Args, Debug, Clone)]
pub struct ParamFlags {
    /// Where every flag below starts: `recipe` (the assignment's: Adam,
    /// 300 iterations, blend init) or `fast` (as good as the recipe in a
    /// fraction of its time: L-BFGS, coarse-to-fine, recoloured init).
    /// Flags given beside it override its values.
    #[arg(long, value_parser = Preset::parse, default_value = "recipe")]
    pub preset: Preset,
    /// Optimizer iterations [default: the preset's, 300 / 55].
    #[arg(long)]
    pub iters: Option<usize>,
    /// Content weight α.
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
    pub alpha: f64,
    /// Style weight β.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub beta: f64,
    /// Total-variation weight (mean squared neighbour difference, pixel units).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub tv_weight: f64,
    /// Adam learning rate (pixel units); L-BFGS's first-step bound.
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    pub lr: f64,
    /// adam | lbfgs [default: the preset's, adam / lbfgs].
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerArg>,
    /// L-BFGS history size.
    #[arg(long, default_value_t = 10)]
    pub lbfgs_history: usize,
    /// blend | content | noise | recolored (the content in the style's
    /// colours), or (render only) the PATH of an image to start from
    /// [default: the preset's, blend / recolored].
    #[arg(long)]
    pub init: Option<String>,
    /// Share of noise in the blend and recolored inits [default: the
    /// preset's, 0.6 / 0.1].
    #[arg(long, allow_negative_numbers = true)]
    pub noise_ratio: Option<f64>,
    /// Seed of the init noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// VGG's pooling: avg (the recipe's, smoother) or max.
    #[arg(long, value_enum, default_value = "avg")]
    pub pooling: PoolingArg,
    /// Content layers, `name[:weight]`, comma-separated.
    #[arg(long, default_value = "conv4_2")]
    pub content_layers: String,
    /// Style layers, `name[:weight]`, comma-separated.
    #[arg(long, default_value = "conv1_1:0.5,conv2_1:1.0,conv3_1:1.5,conv4_1:3.0,conv5_1:4.0")]
    pub style_layers: String,
    /// Blend weights of the styles, comma-separated (default: equal). With
    /// `submit`, giving them blends every style into one picture per content.
    #[arg(long, value_delimiter = ',')]
    pub style_blend: Vec<f64>,
    /// Coarse-to-fine: render first at these fractions of the size (e.g.
    /// `0.25,0.5`, ascending, each below 1), each result upsampled (with
    /// the content's lost detail put back) to start the next; the
    /// full-size render then starts from the last. `--scales none` turns
    /// a preset's off [default: the preset's, none / 0.5].
    #[arg(long, value_parser = parse_scales)]
    pub scales: Option<Scales>,
    /// Iterations at each coarse scale [default: the preset's, or --iters].
    #[arg(long)]
    pub coarse_iters: Option<usize>,
    /// Keep the photo's colours (Gatys et al. 2016): `luminance` (style
    /// transfer on luminance only, the photo's colour channels kept) or
    /// `histogram` (the paintings recoloured to the photo's colours first).
    #[arg(long, value_enum)]
    pub preserve_colors: Option<PreserveColorsArg>,
    /// Bits per channel of the output PNG: 8, or 16 to keep what rounding
    /// to 8 bits would lose (snapshots stay 8-bit).
    #[arg(long, default_value_t = 8, value_parser = parse_bit_depth)]
    pub bit_depth: u8,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PreserveColorsArg {
    Luminance,
    Histogram,
}

impl From<PreserveColorsArg> for PreserveColors {
    fn from(p: PreserveColorsArg) -> Self {
        match p {
            PreserveColorsArg::Luminance => PreserveColors::Luminance,
            PreserveColorsArg::Histogram => PreserveColors::Histogram,
        }
    }
}

impl ParamFlags {
    /// The parameters these flags give: the preset's, with every flag that
    /// was given put over them.
    pub fn to_params(&self) -> Result<RenderParams> {
        let preset = self.preset.params();
        Ok(RenderParams {
            alpha: self.alpha,
            beta: self.beta,
            tv_weight: self.tv_weight,
            optimizer: self.optimizer.map_or(preset.optimizer, Into::into),
            lr: self.lr,
            lbfgs_history: self.lbfgs_history,
            iterations: self.iters.unwrap_or(preset.iterations),
            init: self.init.as_deref().map_or(preset.init, parse_init),
            noise_ratio: self.noise_ratio.unwrap_or(preset.noise_ratio),
            seed: self.seed,
            pooling: self.pooling.into(),
            content_layers: parse_layers("--content-layers", &self.content_layers)?,
            style_layers: parse_layers("--style-layers", &self.style_layers)?,
            style_blend: self.style_blend.clone(),
            scales: self.scales.clone().map_or(preset.scales, |s| s.0),
            // A preset's coarse iterations go with its own scales.
            coarse_iters: self.coarse_iters.or(if self.scales.is_none() { preset.coarse_iters } else { None }),
            preserve_colors: self.preserve_colors.map(Into::into),
        })
    }

    /// How these flags and `tile` (`farmctl render --tile`) say to run the
    /// render (the kept tiles are `farmctl render`'s to set from its
    /// budget).
    pub fn execution(&self, tile: Option<usize>) -> Execution {
        Execution { tile, keep_tiles: 0, bit_depth: self.bit_depth }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OptimizerArg {
    Adam,
    Lbfgs,
}

impl From<OptimizerArg> for Optimizer {
    fn from(o: OptimizerArg) -> Self {
        match o {
            OptimizerArg::Adam => Optimizer::Adam,
            OptimizerArg::Lbfgs => Optimizer::Lbfgs,
        }
    }
}

impl From<PoolingArg> for Pooling {
    fn from(p: PoolingArg) -> Self {
        match p {
            PoolingArg::Avg => Pooling::Avg,
            PoolingArg::Max => Pooling::Max,
        }
    }
}

/// `--bit-depth`: 8 or 16.
/// A label `KEY=VALUE` (`--require`, `workers --label`), checked as the
/// coordinator checks it.
pub fn label(s: &str) -> std::result::Result<String, String> {
    stylefarm_proto::labels::check(s).map(|()| s.to_string())
}

pub fn parse_bit_depth(s: &str) -> Result<u8> {
    match s.trim() {
        "8" => Ok(8),
        "16" => Ok(16),
        other => anyhow::bail!("`{other}`: a PNG here has 8 or 16 bits per channel"),
    }
}

/// `--scales`: fractions of the render size, comma-separated.
#[derive(Debug, Clone, PartialEq)]
pub struct Scales(pub Vec<f64>);

/// `0.25,0.5` → the fractions; `none` (or nothing) → no coarse stages.
/// Their range and order are checked with the other parameters.
pub fn parse_scales(s: &str) -> Result<Scales> {
    if s.trim().is_empty() || s.trim() == "none" {
        return Ok(Scales(Vec::new()));
    }
    s.split(',')
        .map(|p| p.trim().parse::<f64>().with_context(|| format!("`{p}` is not a number (a fraction of the size such as 0.5, or `none`)")))
        .collect::<Result<_>>()
        .map(Scales)
}

/// `--init`: the keywords blend, content, noise and recolored; anything
/// else is the path of an image to start from.
pub fn parse_init(s: &str) -> Init {
    match s {
        "blend" => Init::Blend,
        "content" => Init::Content,
        "noise" => Init::Noise,
        "recolored" => Init::Recolored,
        _ => Init::Image,
    }
}

/// `conv1_1:0.5,conv2_1` → layers with weights (default weight 1).
pub fn parse_layers(flag: &str, s: &str) -> Result<Vec<LayerWeight>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let (name, weight) = match part.split_once(':') {
                Some((n, w)) => (n.trim(), w.trim().parse::<f64>().with_context(|| format!("{flag}: `{w}` in `{part}` is not a number"))?),
                None => (part.trim(), 1.0),
            };
            Ok(LayerWeight::new(name, weight))
        })
        .collect()
}

/// One `KEY=VALUE` of `--variant` or `--set` as a parameter: the key with
/// `-` read as `_` (`tv-weight` is `tv_weight`, as the flags spell it)
/// and the value as JSON where it reads as JSON (`1e4`, `true`,
/// `[0.25,0.5]`), layers as the flags write them for the layer keys
/// (`conv1_1:0.5`, `[conv1_1:0.5,conv4_1:1]`), else a string (`adam`).
/// `context` names where the pair came from in an error.
pub fn key_value(context: &str, pair: &str) -> Result<(String, serde_json::Value)> {
    let (key, text) = pair.split_once('=').with_context(|| format!("{context}: `{pair}` is not KEY=VALUE"))?;
    let (key, text) = (key.trim().replace('-', "_"), text.trim());
    let value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) if matches!(key.as_str(), "content_layers" | "style_layers") => {
            serde_json::to_value(parse_layers(&format!("{context} {key}"), text.trim_start_matches('[').trim_end_matches(']'))?)?
        }
        Err(_) => serde_json::Value::String(text.to_string()),
    };
    Ok((key, value))
}

/// The flags `args` give, parsed as a command of these flags alone (for
/// the tests of the commands that take them).
#[cfg(test)]
pub fn parse_flags(args: &[&str]) -> std::result::Result<ParamFlags, clap::Error> {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        params: ParamFlags,
    }
    Cli::try_parse_from(std::iter::once("farmctl").chain(args.iter().copied())).map(|cli| cli.params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_reads_the_same_for_set_and_variant() {
        let read = |pair: &str| key_value("--set", pair).unwrap();
        assert_eq!(read("tv-weight=1e-3"), ("tv_weight".into(), serde_json::json!(0.001)), "a flag's spelling of the key");
        assert_eq!(read("optimizer=adam"), ("optimizer".into(), serde_json::json!("adam")));
        assert_eq!(read("scales=[0.25,0.5]"), ("scales".into(), serde_json::json!([0.25, 0.5])));
        let (key, layers) = read("style_layers=[conv1_1:0.5,conv4_1]");
        assert_eq!(key, "style_layers");
        assert_eq!(layers, serde_json::to_value(parse_layers("", "conv1_1:0.5,conv4_1").unwrap()).unwrap(), "layers as the flags write them");
        let e = key_value("--set", "beta").unwrap_err().to_string();
        assert!(e.contains("--set") && e.contains("KEY=VALUE"), "{e}");
    }

    fn params(args: &[&str]) -> Result<RenderParams> {
        parse_flags(args)?.to_params()
    }

    #[test]
    fn no_flags_are_the_recipe_and_the_fast_preset_is_the_engines() {
        assert_eq!(params(&[]).unwrap(), RenderParams::default());
        assert_eq!(params(&["--preset", "recipe"]).unwrap(), RenderParams::default());
        assert_eq!(params(&["--preset", "fast"]).unwrap(), Preset::Fast.params());
    }

    #[test]
    fn colour_preservation_and_bit_depth_flags() {
        let p = params(&["--preserve-colors", "luminance", "--bit-depth", "16"]).unwrap();
        assert_eq!(p.preserve_colors, Some(PreserveColors::Luminance));
        let flags = parse_flags(&["--bit-depth", "16"]).unwrap();
        assert_eq!(flags.execution(Some(256)), Execution { tile: Some(256), keep_tiles: 0, bit_depth: 16 });
        assert_eq!(params(&["--preserve-colors", "histogram"]).unwrap().preserve_colors, Some(PreserveColors::Histogram));
        let e = params(&["--bit-depth", "12"]).unwrap_err().to_string();
        assert!(e.contains("8 or 16"), "{e}");
        assert!(params(&["--preserve-colors", "sepia"]).is_err());
    }

    #[test]
    fn flags_beside_a_preset_override_it() {
        let p = params(&["--preset", "fast", "--iters", "80", "--init", "blend", "--noise-ratio", "0.3", "--alpha", "0.05"]).unwrap();
        let fast = Preset::Fast.params();
        assert_eq!((p.iterations, &p.init, p.noise_ratio, p.alpha), (80, &Init::Blend, 0.3, 0.05));
        assert_eq!((p.optimizer, &p.scales, p.coarse_iters), (fast.optimizer, &fast.scales, fast.coarse_iters), "the rest is the preset's");
        let p = params(&["--preset", "fast", "--optimizer", "adam", "--scales", "none"]).unwrap();
        assert_eq!((p.optimizer, p.scales.len(), p.coarse_iters), (Optimizer::Adam, 0, None), "its scales and their iterations go together");
        let p = params(&["--preset", "fast", "--scales", "0.25,0.5"]).unwrap();
        assert_eq!((p.scales, p.coarse_iters), (vec![0.25, 0.5], None));
        let p = params(&["--optimizer", "lbfgs", "--scales", "0.5", "--coarse-iters", "9"]).unwrap();
        assert_eq!((p.optimizer, p.scales, p.coarse_iters, &p.init), (Optimizer::Lbfgs, vec![0.5], Some(9), &Init::Blend), "over the recipe");
    }

    #[test]
    fn a_wrong_preset_or_scale_is_refused_by_name() {
        let err = params(&["--preset", "turbo"]).unwrap_err().to_string();
        assert!(err.contains("turbo") && err.contains("recipe, fast"), "{err}");
        let err = params(&["--scales", "0.5,half"]).unwrap_err().to_string();
        assert!(err.contains("half"), "{err}");
    }
}
