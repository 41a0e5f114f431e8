//! `farmctl render`: one styled image on this machine, no servers.
//!
//! Reads and checks every input before any work, then runs the engine's
//! step function, writing snapshots, a JSON-lines loss log and the final
//! PNG. A progress bar on stderr shows iteration, losses and ETA.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use stylefarm_engine::checkpoint::{Checkpoint, Identity, LossRecord};
use stylefarm_engine::{graph, pixels, DType, Device, Init, LayerWeight, Optimizer, Pooling, RenderParams, Renderer, Tensor, Vgg19};
use stylefarm_shared::checkpoints::CheckpointStore;
use stylefarm_shared::image_io::{self, ImageLimits};
use stylefarm_shared::storage::Store;
use stylefarm_shared::tfevents::EventWriter;
use stylefarm_shared::{plot, size, weights};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PoolingArg {
    Avg,
    Max,
}

#[derive(Args)]
pub struct RenderArgs {
    /// The photo whose content is kept.
    #[arg(long)]
    pub content: PathBuf,
    /// The painting whose style is taken (repeat to blend several).
    #[arg(long, required = true)]
    pub style: Vec<PathBuf>,
    /// Blend weights of the styles, comma-separated (default: equal).
    #[arg(long, value_delimiter = ',')]
    pub style_blend: Vec<f64>,
    /// Output PNG.
    #[arg(long, short)]
    pub output: PathBuf,
    #[command(flatten)]
    pub params: ParamFlags,
    /// Render size WIDTHxHEIGHT (default: the content's aspect, longer side --max-side).
    #[arg(long, conflicts_with = "max_side")]
    pub size: Option<String>,
    /// Longer side of the render when --size is not given.
    #[arg(long, default_value_t = 512)]
    pub max_side: u32,
    /// Write OUTPUT_0010.png … every N iterations (0 = never).
    #[arg(long, default_value_t = 0)]
    pub snapshot_every: usize,
    /// Write one JSON object per iteration (iteration, content, style, tv, total, seconds).
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// VGG-19 weights file (default: $STYLEFARM_WEIGHTS or the cache).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Largest input image accepted, in megapixels.
    #[arg(long, default_value_t = 64)]
    pub max_input_megapixels: u64,
    /// Write a checkpoint every N iterations (0 = only on Ctrl-C/SIGTERM
    /// when --checkpoint-dir is given).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Where checkpoints go: a folder or a URL (file://, s3://, gs://, az://).
    /// Default: OUTPUT.ckpt/ beside the output.
    #[arg(long)]
    pub checkpoint_dir: Option<String>,
    /// How many of the newest checkpoints to keep.
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Continue from the newest valid checkpoint (same inputs and parameters).
    #[arg(long)]
    pub resume: bool,
    /// Skip the loss plot, TensorBoard events and graph beside the output.
    #[arg(long)]
    pub no_extras: bool,
    /// Coarse-to-fine: render first at these fractions of the size (e.g.
    /// `0.25,0.5`, ascending, each below 1), each result upsampled to start
    /// the next; the full-size render then starts from the last.
    #[arg(long, value_delimiter = ',')]
    pub scales: Vec<f64>,
    /// Iterations at each coarse scale (default: --iters).
    #[arg(long)]
    pub coarse_iters: Option<usize>,
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
}

impl ParamFlags {
    /// The parameters these flags give, with `init` already parsed from
    /// `--init` and the style blend weights (empty = equal).
    pub fn to_params(&self, init: Init, style_blend: Vec<f64>) -> Result<RenderParams> {
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
            style_blend,
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

/// `out.png` → `out{suffix}`, beside it.
pub fn beside(output: &Path, suffix: &str) -> PathBuf {
    let stem = output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    output.with_file_name(format!("{stem}{suffix}"))
}

/// `out.png` → `out_0010.png`.
pub fn snapshot_path(output: &Path, iteration: usize) -> PathBuf {
    beside(output, &format!("_{iteration:04}.png"))
}

/// Fails now, not after the render, if `path` cannot be written.
fn check_writable(path: &Path, what: &str) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("cannot write {what} {}: folder {} does not exist", path.display(), dir.display());
    }
    if path.is_dir() {
        bail!("cannot write {what} {}: it is a folder", path.display());
    }
    let probe = dir.join(format!(".farmctl-probe-{}", std::process::id()));
    File::create(&probe).with_context(|| format!("cannot write {what} {}: folder {} is not writable", path.display(), dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

fn to_tensor(img: &image::RgbImage) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    Ok(pixels::to_tensor(img.as_raw(), w as usize, h as usize, DType::F32, &Device::Cpu)?)
}

fn write_png(path: &Path, image: &Tensor) -> Result<()> {
    let (rgb, w, h) = pixels::to_rgb(image)?;
    image_io::save_png(path, &rgb, w as u32, h as u32)?;
    Ok(())
}

/// Set by Ctrl-C or SIGTERM; the loop checkpoints and stops.
static STOP: AtomicBool = AtomicBool::new(false);

/// The files written beside the output: loss log, plot, TensorBoard events.
struct Records {
    log: Option<BufWriter<File>>,
    events: Option<EventWriter>,
    plot: Option<PathBuf>,
    weights: (f64, f64, f64),
}

impl Records {
    fn push(&mut self, r: &LossRecord) -> Result<()> {
        if let Some(f) = self.log.as_mut() {
            let line = serde_json::json!({
                "iteration": r.iteration, "content": r.losses.content, "style": r.losses.style,
                "tv": r.losses.tv, "total": r.losses.total, "seconds": r.seconds,
            });
            writeln!(f, "{line}").and_then(|_| f.flush()).context("cannot write the loss log")?;
        }
        if let Some(ev) = self.events.as_mut() {
            let l = &r.losses;
            ev.scalars(r.iteration as i64, &[("loss/total", l.total), ("loss/content", l.content), ("loss/style", l.style), ("loss/tv", l.tv)])
                .context("cannot write the TensorBoard events")?;
        }
        Ok(())
    }

    fn draw(&mut self, history: &[LossRecord], title: &str) -> Result<()> {
        if let Some(ev) = self.events.as_mut() {
            ev.flush().context("cannot write the TensorBoard events")?;
        }
        if let Some(p) = &self.plot {
            plot::loss_curves(p, history, self.weights, title)?;
        }
        Ok(())
    }
}

pub fn run(args: RenderArgs) -> Result<()> {
    // 1. Parameters and output locations, all checked before any work.
    let init = parse_init(&args.params.init);
    let mut params = args.params.to_params(init.clone(), args.style_blend.clone())?;
    params.validate(args.style.len())?;
    if args.scales.iter().any(|s| !(s.is_finite() && *s > 0.0 && *s < 1.0)) || args.scales.windows(2).any(|p| p[0] >= p[1]) {
        bail!("--scales {:?}: each must lie in (0, 1), in ascending order (the full size comes last by itself)", args.scales);
    }
    if args.output.extension().is_none_or(|e| !e.eq_ignore_ascii_case("png")) {
        bail!("output {} must end in .png", args.output.display());
    }
    check_writable(&args.output, "output")?;
    if let Some(log) = &args.log {
        check_writable(log, "loss log")?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let checkpoints = if args.checkpoint_every > 0 || args.checkpoint_dir.is_some() || args.resume {
        let location = args.checkpoint_dir.clone().unwrap_or_else(|| beside(&args.output, ".ckpt").to_string_lossy().into_owned());
        let store = CheckpointStore::new(Store::open(&location)?, args.keep_checkpoints);
        runtime
            .block_on(store.check_writable())
            .with_context(|| format!("checkpoint location {location} does not take writes"))?;
        Some(store)
    } else {
        None
    };

    // 2. Inputs.
    let limits = ImageLimits { max_pixels: args.max_input_megapixels << 20, ..ImageLimits::default() };
    let content_img = image_io::load_rgb(&args.content, limits)?;
    let (w, h) = match &args.size {
        Some(s) => size::parse_size(s)?,
        None => size::fit_max_side(content_img.dimensions(), args.max_side)?,
    };
    let content = to_tensor(&image_io::resize(&content_img, w, h))?;
    // Each style is resized to the render size, as the assignment did.
    let styles = args
        .style
        .iter()
        .map(|p| to_tensor(&image_io::resize(&image_io::load_rgb(p, limits)?, w, h)))
        .collect::<Result<Vec<_>>>()?;
    let mut init_image = match init {
        Init::Image => Some(to_tensor(&image_io::resize(&image_io::load_rgb(Path::new(&args.params.init), limits)?, w, h))?),
        _ => None,
    };
    let weights = weights::load(&weights::weights_path(args.weights.as_deref()), &Device::Cpu)?;
    let vgg = Arc::new(Vgg19::new(&weights, params.pooling, DType::F32)?);

    // Coarse-to-fine: each scale starts from the previous one's result; the
    // full-size render starts from the last (so it is an `image` init, and
    // a resume recomputes the same start).
    if !args.scales.is_empty() {
        let style_imgs = args.style.iter().map(|p| image_io::load_rgb(p, limits)).collect::<Result<Vec<_>, _>>()?;
        let mut previous = init_image.clone();
        for &scale in &args.scales {
            let (sw, sh) = (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
            let content_s = to_tensor(&image_io::resize(&content_img, sw, sh))?;
            let styles_s = style_imgs.iter().map(|img| to_tensor(&image_io::resize(img, sw, sh))).collect::<Result<Vec<_>>>()?;
            let start = previous.as_ref().map(|t| pixels::resize(t, sw as usize, sh as usize)).transpose()?;
            let iterations = args.coarse_iters.unwrap_or(args.params.iters);
            let params_s = RenderParams { iterations, init: if start.is_some() { Init::Image } else { params.init.clone() }, ..params.clone() };
            let renderer = Renderer::new(vgg.clone(), params_s, &content_s, &styles_s)?;
            let mut state = renderer.initial_state(&content_s, start.as_ref())?;
            if !args.quiet {
                eprintln!("scale {scale}: {sw}x{sh}, {iterations} iterations");
            }
            while state.iteration < iterations {
                renderer.step(&mut state)?;
            }
            previous = Some(state.image);
        }
        init_image = previous.map(|t| pixels::resize(&t, w as usize, h as usize)).transpose()?;
        params.init = Init::Image;
    }
    let identity = Identity::new(&params, &content, &styles, init_image.as_ref())?;

    // 3. Where the render starts: a checkpoint or the init.
    let renderer = Renderer::new(vgg, params.clone(), &content, &styles)?;
    let mut resumed = None;
    if let (true, Some(store)) = (args.resume, &checkpoints) {
        let (found, warnings) = runtime.block_on(store.newest_valid(&Device::Cpu))?;
        for warning in warnings {
            eprintln!("warning: {warning}");
        }
        match found {
            Some(ck) => {
                if let Some(diff) = ck.identity.difference(&identity) {
                    bail!("cannot resume from the checkpoint in {}: {diff}", store.location());
                }
                eprintln!("resuming from iteration {} ({})", ck.state.iteration, store.location());
                resumed = Some(ck);
            }
            None => eprintln!("no checkpoint in {}; starting from the beginning", store.location()),
        }
    }
    let (mut state, mut history) = match resumed {
        Some(ck) => (ck.state, ck.history),
        None => (renderer.initial_state(&content, init_image.as_ref())?, Vec::new()),
    };

    // 4. Records beside the output, rewritten from the history on resume.
    let mut records = Records {
        log: match &args.log {
            Some(p) => Some(BufWriter::new(File::create(p).with_context(|| format!("cannot create loss log {}", p.display()))?)),
            None => None,
        },
        events: None,
        plot: (!args.no_extras).then(|| beside(&args.output, "_losses.svg")),
        weights: (params.alpha, params.beta, params.tv_weight),
    };
    if !args.no_extras {
        let dir = beside(&args.output, ".tb");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("events.out.tfevents.")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        records.events = Some(EventWriter::create(&dir).with_context(|| format!("cannot write TensorBoard events in {}", dir.display()))?);
        let dot = beside(&args.output, ".dot");
        std::fs::write(&dot, graph::dot(&params, w as usize, h as usize)?).with_context(|| format!("cannot write {}", dot.display()))?;
    }
    for r in &history {
        records.push(r)?;
    }

    // 5. The loop.
    let title = format!(
        "{} × {}",
        args.content.file_stem().unwrap_or_default().to_string_lossy(),
        args.style[0].file_stem().unwrap_or_default().to_string_lossy()
    );
    runtime.spawn(async {
        stylefarm_shared::telemetry::stop_signal().await;
        STOP.store(true, Ordering::SeqCst);
    });
    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(args.params.iters as u64) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} it  {msg}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_position(state.iteration as u64);
    bar.reset_eta();
    let offset = history.last().map(|r| r.seconds).unwrap_or(0.0);
    let started = Instant::now();
    let seconds = || offset + started.elapsed().as_secs_f64();
    let save = |state: &stylefarm_engine::RenderState, history: &Vec<LossRecord>| -> Result<()> {
        if let Some(store) = &checkpoints {
            let ck = Checkpoint { state: state.clone(), history: history.clone(), identity: identity.clone() };
            runtime
                .block_on(store.save(&ck))
                .with_context(|| format!("checkpoint at iteration {} failed; the previous checkpoint stays valid", state.iteration))?;
        }
        Ok(())
    };
    while state.iteration < args.params.iters {
        let iteration = state.iteration;
        let losses = renderer.step(&mut state)?;
        let record = LossRecord { iteration, losses, seconds: seconds() };
        records.push(&record)?;
        history.push(record);
        if !losses.total.is_finite() {
            bail!("the loss became {} at iteration {iteration}; try a smaller --lr", losses.total);
        }
        bar.set_message(format!("total {:.4e}  content {:.3e}  style {:.3e}", losses.total, losses.content, losses.style));
        bar.inc(1);
        if args.snapshot_every > 0 && state.iteration % args.snapshot_every == 0 {
            write_png(&snapshot_path(&args.output, state.iteration), &state.image)?;
            records.draw(&history, &title)?;
        }
        if args.checkpoint_every > 0 && state.iteration % args.checkpoint_every == 0 {
            save(&state, &history)?;
        }
        if STOP.load(Ordering::SeqCst) {
            save(&state, &history)?;
            bar.abandon();
            match &checkpoints {
                Some(store) => bail!("interrupted at iteration {}; checkpoint saved in {}; run again with --resume to continue", state.iteration, store.location()),
                None => bail!("interrupted at iteration {} (no --checkpoint-dir, so the work is lost)", state.iteration),
            }
        }
    }
    // The last record is the final image, so the log ends where the render does.
    let last = renderer.evaluate(&state.image)?;
    let record = LossRecord { iteration: state.iteration, losses: last, seconds: seconds() };
    records.push(&record)?;
    history.push(record);
    records.draw(&history, &title)?;
    bar.finish_and_clear();
    write_png(&args.output, &state.image)?;
    println!(
        "wrote {} ({w}x{h}, {} iterations, total loss {:.4e}, {:.1}s)",
        args.output.display(),
        state.iteration,
        last.total,
        seconds()
    );
    Ok(())
}
