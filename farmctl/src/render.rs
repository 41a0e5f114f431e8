//! `farmctl render`: one styled image on this machine, no servers.
//!
//! Reads and checks every input before any work, then drives the engine's
//! [`Session`] — the same driver a farm worker uses — with hooks that write
//! snapshots, the JSON-lines loss log, TensorBoard events, the loss plot and
//! checkpoints beside the output, and a progress bar on stderr.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use stylefarm_engine::session::Resample;
use stylefarm_engine::{graph, Cadence, Checkpoint, Control, DType, Device, Execution, Hooks, Init, LossRecord, Outcome, Session, Stage, Vgg19};
use stylefarm_shared::checkpoints::CheckpointStore;
use stylefarm_shared::image_io::{self, ImageLimits};
use stylefarm_shared::pictures::Sources;
use stylefarm_shared::records;
use stylefarm_shared::storage::Store;
use stylefarm_shared::tfevents::EventWriter;
use stylefarm_shared::{plot, size, weights};
use tokio_util::sync::CancellationToken;

use crate::flags::ParamFlags;

#[derive(Args)]
pub struct RenderArgs {
    /// The photo whose content is kept.
    #[arg(long)]
    pub content: PathBuf,
    /// The painting whose style is taken (repeat to blend several).
    #[arg(long, required = true)]
    pub style: Vec<PathBuf>,
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
    /// Evaluate the losses in tiles of N pixels a side (rounded up to 16):
    /// the same render in the memory of one tile and its halo. Without it,
    /// `render` tiles on its own when the untiled render would not fit
    /// --max-memory. (A farm worker tiles as its own memory requires.)
    #[arg(long)]
    pub tile: Option<usize>,
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
    /// Memory the render may use (e.g. 8G, 512M); a render the model says
    /// needs more is refused before it starts [default: the memory the
    /// machine has available].
    #[arg(long, value_parser = |s: &str| stylefarm_shared::budget::parse_bytes(s))]
    pub max_memory: Option<u64>,
    /// Print the render's size and the memory it needs, and whether that
    /// fits, then exit without rendering.
    #[arg(long)]
    pub dry_run: bool,
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

/// The session's picture (what the user sees of the render) as a PNG at
/// `bits` per channel.
fn write_png(path: &Path, session: &Session, bits: u8) -> Result<()> {
    let picture = session.picture()?.context("the render has no image yet")?;
    image_io::save_picture(path, &picture, bits)?;
    Ok(())
}

/// The local render's side of a session: files beside the output, a
/// progress bar, checkpoints in the checkpoint store, Ctrl-C.
struct LocalHooks<'a> {
    output: &'a Path,
    log: Option<BufWriter<File>>,
    events: Option<EventWriter>,
    plot: Option<PathBuf>,
    title: String,
    bar: ProgressBar,
    quiet: bool,
    checkpoints: Option<&'a CheckpointStore>,
    runtime: &'a tokio::runtime::Runtime,
    stop: CancellationToken,
}

impl LocalHooks<'_> {
    fn record(&mut self, r: &LossRecord) -> Result<()> {
        if let Some(f) = self.log.as_mut() {
            f.write_all(records::log_line(r).as_bytes()).and_then(|_| f.flush()).context("cannot write the loss log")?;
        }
        if let Some(ev) = self.events.as_mut() {
            records::write_scalars(ev, r).context("cannot write the TensorBoard events")?;
        }
        Ok(())
    }

    /// Flushes the events and redraws the plot from the whole history.
    fn draw(&mut self, session: &Session) -> Result<()> {
        if let Some(ev) = self.events.as_mut() {
            ev.flush().context("cannot write the TensorBoard events")?;
        }
        if let Some(path) = &self.plot {
            let p = session.params();
            let svg = plot::loss_curves(session.history(), (p.alpha, p.beta, p.tv_weight), &self.title)?;
            std::fs::write(path, svg).with_context(|| format!("cannot write the loss plot {}", path.display()))?;
        }
        Ok(())
    }

    fn save(&self, checkpoint: &Checkpoint) -> Result<()> {
        if let Some(store) = self.checkpoints {
            let iteration = checkpoint.state.iteration;
            self.runtime
                .block_on(store.save(checkpoint))
                .with_context(|| format!("checkpoint at iteration {iteration} failed; the previous checkpoint stays valid"))?;
        }
        Ok(())
    }
}

impl Hooks for LocalHooks<'_> {
    type Error = anyhow::Error;

    fn control(&mut self) -> Control {
        if self.stop.is_cancelled() {
            Control::Stop
        } else {
            Control::Continue
        }
    }

    fn stage(&mut self, stage: &Stage) -> Result<()> {
        if !self.quiet {
            self.bar.suspend(|| eprintln!("scale {}: {}x{}, {} iterations", stage.scale, stage.width, stage.height, stage.iterations));
        }
        Ok(())
    }

    fn iteration(&mut self, _: &Session, r: &LossRecord) -> Result<()> {
        self.record(r)?;
        let l = &r.losses;
        self.bar.set_message(format!("total {:.4e}  content {:.3e}  style {:.3e}", l.total, l.content, l.style));
        self.bar.inc(1);
        Ok(())
    }

    fn snapshot(&mut self, session: &Session) -> Result<()> {
        if session.image().is_some() {
            write_png(&snapshot_path(self.output, session.iteration()), session, 8)?;
        }
        self.draw(session)
    }

    fn checkpoint(&mut self, _: &Session, checkpoint: Checkpoint) -> Result<()> {
        self.save(&checkpoint)
    }
}

/// The memory model against the budget: `--dry-run` prints both. A render
/// that would not fit is tiled when tiling makes it fit (and `--tile` was
/// not given), else refused with the numbers and the largest size that
/// fits; tiled, what memory is left keeps pass 1's activations for pass 2
/// ([`stylefarm_engine::RenderParams::plan`], the rule workers follow too).
/// Returns how to run the render.
fn check_memory(params: &stylefarm_engine::RenderParams, asked: Execution, (w, h): (u32, u32), max_memory: Option<u64>, dry_run: bool) -> Result<Execution> {
    use stylefarm_shared::budget::{usable_memory, human, largest_fitting_side};
    let (budget, whence) = match (max_memory, usable_memory()) {
        (Some(b), _) => (Some(b), "--max-memory"),
        (None, Some(b)) => (Some(b), "available now"),
        (None, None) => (None, "unknown"),
    };
    let untiled = params.estimated_peak_bytes(w, h);
    let execution = Execution { bit_depth: asked.bit_depth, ..params.plan(w, h, budget, asked.tile) };
    let note = match (asked.tile, execution.tile) {
        (None, Some(_)) => format!(" (untiled it would need {}: tiled automatically)", human(untiled)),
        _ => String::new(),
    };
    let need = params.peak_bytes(&execution, w, h);
    let fits = budget.is_none_or(|b| need <= b);
    if dry_run {
        let depth = params.active_layers()?.2;
        let deepest = depth.checked_sub(1).map_or("none", |i| stylefarm_engine::arch::VGG19[i].name);
        let tiling = execution.tile.map_or("untiled".to_string(), |t| format!("tiles of {t} px, {} kept for pass 2", execution.keep_tiles));
        println!("render {w}x{h}, {:?}, layers to {deepest} on cpu, {tiling}", params.optimizer);
        println!("peak memory (model): {} ({need} bytes){note}", human(need));
        match budget {
            Some(b) => println!("budget ({whence}): {} — {}", human(b), if fits { "fits" } else { "does not fit" }),
            None => println!("budget: unknown (give --max-memory)"),
        }
    } else if !note.is_empty() {
        eprintln!("{w}x{h} in tiles of {} px: {} of memory{note}", execution.tile.unwrap_or_default(), human(need));
    }
    if let (false, Some(b)) = (fits, budget) {
        let instead = match largest_fitting_side(params, (w, h), b) {
            Some(side) => format!("render it at --max-side {side} or smaller"),
            None => "not even a 16 px render fits it".to_string(),
        };
        bail!("{w}x{h} needs about {} and the budget ({whence}) is {}: {instead}, or give more memory (--max-memory)", human(need), human(b));
    }
    Ok(execution)
}

pub fn run(args: RenderArgs) -> Result<()> {
    // 1. Parameters and output locations, all checked before any work.
    let params = args.params.to_params()?;
    let init = params.init.clone();
    params.validate(args.style.len())?;
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

    // 2. Inputs, decoded once; the session sees them at each size it needs.
    let limits = ImageLimits { max_pixels: args.max_input_megapixels << 20, ..ImageLimits::default() };
    let sources = Sources {
        content: image_io::load_rgb(&args.content, limits)?,
        styles: args.style.iter().map(|p| image_io::load_rgb(p, limits)).collect::<Result<_, _>>()?,
        init: match init {
            Init::Image => Some(image_io::load_rgb16(Path::new(args.params.init.as_deref().unwrap_or_default()), limits)?),
            _ => None,
        },
    };
    let (w, h) = match &args.size {
        Some(s) => size::parse_size(s)?,
        None => size::fit_max_side(sources.content.dimensions(), args.max_side)?,
    };
    let execution = check_memory(&params, args.params.execution(args.tile), (w, h), args.max_memory, args.dry_run)?;
    if args.dry_run {
        return Ok(());
    }
    let (w, h) = (w as usize, h as usize);
    let device = Device::Cpu;
    let weights = weights::load(&weights::weights_path(args.weights.as_deref()), &device)?;
    let vgg = Arc::new(Vgg19::new(&weights, params.pooling, DType::F32)?);
    let mut session = Session::with_execution(vgg, params.clone(), execution, sources.at(w, h, &device)?, sources.init_at(w, h, &device)?)?;

    // 3. Where the render starts: a checkpoint or the init.
    if let (true, Some(store)) = (args.resume, &checkpoints) {
        let (found, warnings) = runtime.block_on(store.newest_valid(&device))?;
        for warning in warnings {
            eprintln!("warning: {warning}");
        }
        match found {
            Some(ck) => {
                let iteration = ck.state.iteration;
                session.resume(ck).with_context(|| format!("the checkpoint in {}", store.location()))?;
                eprintln!("resuming from iteration {iteration} ({})", store.location());
            }
            None => eprintln!("no checkpoint in {}; starting from the beginning", store.location()),
        }
    }

    // 4. Records beside the output, rewritten from the history on resume.
    let title = format!(
        "{} × {}",
        args.content.file_stem().unwrap_or_default().to_string_lossy(),
        args.style[0].file_stem().unwrap_or_default().to_string_lossy()
    );
    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(params.iterations as u64) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} it  {msg}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut hooks = LocalHooks {
        output: &args.output,
        log: match &args.log {
            Some(p) => Some(BufWriter::new(File::create(p).with_context(|| format!("cannot create loss log {}", p.display()))?)),
            None => None,
        },
        events: None,
        plot: (!args.no_extras).then(|| beside(&args.output, "_losses.svg")),
        title,
        bar,
        quiet: args.quiet,
        checkpoints: checkpoints.as_ref(),
        runtime: &runtime,
        stop: runtime.block_on(async { stylefarm_shared::telemetry::shutdown_on_signal() }),
    };
    if !args.no_extras {
        let dir = beside(&args.output, ".tb");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("events.out.tfevents.")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        hooks.events = Some(EventWriter::create(&dir).with_context(|| format!("cannot write TensorBoard events in {}", dir.display()))?);
        let dot = beside(&args.output, ".dot");
        std::fs::write(&dot, graph::dot(&params, w, h)?).with_context(|| format!("cannot write {}", dot.display()))?;
    }
    for r in session.history() {
        hooks.record(r)?;
    }

    // 5. The render.
    hooks.bar.set_position(session.iteration() as u64);
    hooks.bar.reset_eta();
    let cadence = Cadence { snapshot_every: args.snapshot_every, checkpoint_every: args.checkpoint_every };
    let resample: Resample<'_> = &|sw, sh| sources.at(sw, sh, &device);
    match session.run(&mut hooks, cadence, resample)? {
        Outcome::Finished(last) => {
            hooks.record(&last)?;
            hooks.draw(&session)?;
            hooks.bar.finish_and_clear();
            write_png(&args.output, &session, session.execution().bit_depth)?;
            println!("wrote {} ({w}x{h}, {} iterations, total loss {:.4e}, {:.1}s)", args.output.display(), last.iteration, last.losses.total, last.seconds);
            Ok(())
        }
        Outcome::Stopped => {
            hooks.bar.abandon();
            let iteration = session.iteration();
            match (&checkpoints, session.checkpoint()) {
                (Some(store), Some(ck)) => {
                    hooks.save(&ck)?;
                    bail!("interrupted at iteration {iteration}; checkpoint saved in {}; run again with --resume to continue", store.location())
                }
                (Some(_), None) => bail!("interrupted during a coarse stage (nothing to checkpoint yet; a resume starts over)"),
                (None, _) => bail!("interrupted at iteration {iteration} (no --checkpoint-dir, so the work is lost)"),
            }
        }
    }
}
