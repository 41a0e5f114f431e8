//! `farmctl bench`: seconds per iteration, the forward/backward split,
//! effective GFLOP/s and peak memory, per render size, with the real
//! weights and the default losses.
//!
//! GFLOP/s counts the direct-convolution FLOPs (2·9·C_in·C_out·H·W per conv,
//! twice per iteration: forward and input gradient), so figures from
//! engines with different conv algorithms compare on the same work.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use stylefarm_engine::{pixels, DType, Execution, RenderParams, Renderer, Vgg19};
use stylefarm_shared::{size, weights};

#[derive(Args)]
pub struct BenchArgs {
    /// Render sizes WIDTHxHEIGHT, comma-separated, measured in this order.
    #[arg(long, value_delimiter = ',', default_value = "333x250,800x600")]
    pub sizes: Vec<String>,
    /// Timed iterations per size (after the warm-up).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Worker threads (sets RAYON_NUM_THREADS before the first tensor op).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// VGG-19 weights file.
    #[arg(long)]
    pub weights: Option<std::path::PathBuf>,
    /// Print one JSON object per size instead of a table.
    #[arg(long)]
    pub json: bool,
    /// cpu or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Float format of the network and the image: fp32, or bf16 / f16 on a
    /// GPU.
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Evaluate in tiles of N pixels a side (exact tiled evaluation), to
    /// time tiling against the untiled render.
    #[arg(long)]
    tile: Option<usize>,
    /// With --tile: tiles whose activations pass 1 keeps for pass 2 (each
    /// one forward pass fewer per step). Default: as many as the memory
    /// available now holds, as `farmctl render` keeps.
    #[arg(long)]
    keep_tiles: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum Precision {
    Fp32,
    Bf16,
    F16,
}

impl Precision {
    fn dtype(self) -> DType {
        match self {
            Precision::Fp32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

/// The median (NaN for none); also the sweep's summary.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Peak resident memory of this process since the last reset, in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Resets the kernel's peak-RSS counter (Linux ≥ 4.0), so each size reports
/// its own peak.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn noise_image(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..w * h * 3).map(|_| rng.random::<u8>()).collect()
}

pub fn run(args: BenchArgs) -> Result<()> {
    // Must happen before candle starts its thread pools.
    std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    let device = stylefarm_shared::device::open(&args.device)?;
    if device.is_cpu() && args.precision != Precision::Fp32 {
        bail!(
            "--precision {} is for GPUs: on the CPU no maintained Rust GEMM has bf16 or f16 kernels (gemm 0.19 computes \
             f16 through f32; candle 0.11 widens bf16 to f32 for every matmul), so it would only be slower than fp32",
            args.precision.name()
        );
    }
    let weights = weights::load(&weights::weights_path(args.weights.as_deref()), &device)?;
    let params = RenderParams::default();
    let vgg = Arc::new(Vgg19::new(&weights, params.pooling, args.precision.dtype())?);
    let engine = format!("stylefarm-{}", args.precision.name());
    if !args.json {
        println!(
            "farmctl bench: {} on {}, {} threads, VGG-19 to conv5_1, Adam step = forward + image gradient{}",
            args.precision.name(),
            args.device,
            args.threads,
            args.tile.map_or(String::new(), |t| format!(", tiles of {t} px"))
        );
        println!(
            "{:>9} {:>8} {:>9} {:>8} {:>10} {:>10} {:>9} {:>10} {:>10} {:>7}",
            "size", "s/iter", "forward s", "loss s", "backward s", "GFLOP/iter", "GFLOP/s", "peak MiB", "model MiB", "model/peak"
        );
    }
    // The memory model a render is refused and placed by, against the
    // peak measured here (CPU only: a GPU's memory is not this process's RSS).
    let mut off = Vec::new();
    for s in &args.sizes {
        let (w, h) = size::parse_size(s)?;
        reset_peak_rss();
        let tensor = |seed| pixels::to_tensor(&noise_image(w, h, seed), w as usize, h as usize, args.precision.dtype(), &device);
        let (content, style) = (tensor(1)?, tensor(2)?);
        let budget = stylefarm_shared::budget::usable_memory().unwrap_or(0);
        let execution = Execution { tile: args.tile, keep_tiles: args.tile.map_or(0, |t| args.keep_tiles.unwrap_or_else(|| params.most_tiles_kept(t, w, h, budget))), ..Execution::default() };
        if execution.tile.is_some() && !args.json {
            println!("{s}: keeping {} tiles' activations for pass 2", execution.keep_tiles);
        }
        let renderer = Renderer::with_execution(vgg.clone(), params.clone(), &execution, &content, &[style])?;
        let mut state = renderer.initial_state(&content, None)?;
        for _ in 0..args.warmup {
            renderer.step(&mut state)?;
        }
        device.synchronize()?;
        let (mut steps, mut forward, mut loss, mut backward) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.iters {
            let t = Instant::now();
            let (_, phases) = renderer.step_timed(&mut state)?;
            // GPU work is asynchronous: the step is done when the device is.
            device.synchronize()?;
            steps.push(t.elapsed().as_secs_f64());
            forward.push(phases.forward);
            loss.push(phases.loss);
            backward.push(phases.backward);
        }
        let (step, forward, loss, backward) = (median(steps), median(forward), median(loss), median(backward));
        let gflop = renderer.step_flops(h as usize, w as usize) / 1e9;
        let peak = peak_rss_mib().context("cannot read peak memory from /proc/self/status")?;
        let model = params.peak_bytes(&execution, w, h) as f64 / (1u64 << 20) as f64;
        let ratio = model / peak;
        if device.is_cpu() && !(0.9..=1.1).contains(&ratio) {
            off.push(format!("{s} ({ratio:.2})"));
        }
        if args.json {
            let row = serde_json::json!({
                "engine": engine, "device": args.device, "size": s, "threads": args.threads, "seconds_per_iter": step,
                "forward_seconds": forward, "loss_seconds": loss, "backward_seconds": backward,
                "gflop_per_iter": gflop, "gflops": gflop / step, "peak_rss_mib": peak,
                "model_peak_mib": model, "model_over_peak": ratio, "tile": execution.tile, "keep_tiles": execution.keep_tiles,
            });
            println!("{row}");
        } else {
            println!(
                "{:>9} {:>8.3} {:>9.3} {:>8.3} {:>10.3} {:>10.1} {:>9.1} {:>10.0} {:>10.0} {:>7.2}",
                s,
                step,
                forward,
                loss,
                backward,
                gflop,
                gflop / step,
                peak,
                model,
                ratio
            );
        }
    }
    if !args.json && device.is_cpu() {
        if off.is_empty() {
            println!("memory model: within 10% of the measured peak at every size");
        } else {
            println!("memory model: off by more than 10% at {}", off.join(", "));
        }
    }
    Ok(())
}
