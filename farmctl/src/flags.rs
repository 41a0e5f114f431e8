//! The render flags shared by `farmctl render` and `farmctl submit`, and
//! their parsers: one definition, so a farm job takes every flag a local
//! render does.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use stylefarm_engine::{Init, LayerWeight, Optimizer, Pooling, RenderParams};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PoolingArg {
    Avg,
    Max,
}

/// The flags that become a render's [`RenderParams`], one definition for
/// `render` and `submit`.
#[derive(Args, Debug, Clone)]
pub struct ParamFlags {
    /// Optimizer iterations.
    #[arg(long, default_value_t = 300)]
    pub iters: usize,
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
    /// adam | lbfgs.
    #[arg(long, value_enum, default_value = "adam")]
    pub optimizer: OptimizerArg,
    /// L-BFGS history size.
    #[arg(long, default_value_t = 10)]
    pub lbfgs_history: usize,
    /// blend | content | noise, or (render only) the PATH of an image to
    /// start from.
    #[arg(long, default_value = "blend")]
    pub init: String,
    /// Share of noise in the blend init.
    #[arg(long, default_value_t = 0.6, allow_negative_numbers = true)]
    pub noise_ratio: f64,
    /// Seed of the init noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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
    /// `0.25,0.5`, ascending, each below 1), each result upsampled to start
    /// the next; the full-size render then starts from the last.
    #[arg(long, value_delimiter = ',')]
    pub scales: Vec<f64>,
    /// Iterations at each coarse scale (default: --iters).
    #[arg(long)]
    pub coarse_iters: Option<usize>,
}

impl ParamFlags {
    /// The parameters these flags give, with `init` already parsed from
    /// `--init`.
    pub fn to_params(&self, init: Init) -> Result<RenderParams> {
        Ok(RenderParams {
            alpha: self.alpha,
            beta: self.beta,
            tv_weight: self.tv_weight,
            optimizer: self.optimizer.into(),
            lr: self.lr,
            lbfgs_history: self.lbfgs_history,
            iterations: self.iters,
            init,
            noise_ratio: self.noise_ratio,
            seed: self.seed,
            pooling: self.pooling.into(),
            content_layers: parse_layers("--content-layers", &self.content_layers)?,
            style_layers: parse_layers("--style-layers", &self.style_layers)?,
            style_blend: self.style_blend.clone(),
            scales: self.scales.clone(),
            coarse_iters: self.coarse_iters,
        })
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

/// `--init`: the keywords blend, content and noise; anything else is the
/// path of an image to start from.
pub fn parse_init(s: &str) -> Init {
    match s {
        "blend" => Init::Blend,
        "content" => Init::Content,
        "noise" => Init::Noise,
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
