//! `farmctl sweep`: is a faster configuration as good as the recipe, on
//! every pair? Renders every content × every style, for each seed, with
//! the recipe and with each configuration to compare; prints per render
//! the time to "as good as the recipe" ([`stylefarm_engine::quality`]) as a
//! fraction of the recipe's time, and the final losses; writes a contact
//! sheet (content, style, recipe, each configuration side by side) for a
//! person to look at, and one JSON line per render.
//!
//! What is judged is what a user gets: each render's 8-bit image, scored
//! again as `farmctl render --iters 0 --init IMAGE` would. The recipe's
//! image sets the bar; a configuration's final image must meet it, and its
//! time to the bar is read from its log (the iterates stay inside the
//! pixel range, so the log scores what a PNG of that iterate would, to
//! rounding). Each line also gives the image's total loss over the log's
//! last (`png/log`).
//!
//! Times are the engine's render clock (coarse stages included; loading
//! the weights and images, and the targets, excluded — the same for every
//! configuration), on this machine, one render at a time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use stylefarm_engine::quality::{Bar, CONTENT_SLACK};
use stylefarm_engine::session::Resample;
use stylefarm_engine::{pixels, Cadence, DType, Device, EngineError, Hooks, Outcome, Pooling, RenderParams, Session, Vgg19};
use stylefarm_shared::image_io::{self, ImageLimits};
use stylefarm_shared::pictures::Sources;
use stylefarm_shared::{size, weights};

use crate::bench::median;
use crate::farm::expand;

#[derive(Args)]
pub struct SweepArgs {
    /// Content images: files or globs.
    #[arg(long, default_value = "samples/content/*.jpg")]
    content: Vec<String>,
    /// Style images: files or globs.
    #[arg(long, default_value = "samples/styles/*.jpg")]
    style: Vec<String>,
    /// Render size WIDTHxHEIGHT.
    #[arg(long, default_value = "333x250")]
    size: String,
    /// Seeds; every pair is rendered once per seed by every configuration.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    seeds: Vec<u64>,
    /// A configuration to compare with the recipe, as render parameters in
    /// their JSON form (a variant's), e.g. `{"preset":"fast"}` or
    /// `{"optimizer":"lbfgs","iters":60}`. Repeat for several.
    #[arg(long, default_value = r#"{"preset":"fast"}"#)]
    config: Vec<String>,
    /// Where the images, the sheet and `results.jsonl` go.
    #[arg(long, short, default_value = "sweep")]
    output: PathBuf,
    /// Worker threads (sets RAYON_NUM_THREADS before the first tensor op).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// VGG-19 weights file.
    #[arg(long)]
    weights: Option<PathBuf>,
}

/// A session's driver that does nothing at any hook.
struct Quiet;

impl Hooks for Quiet {
    type Error = EngineError;
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A render's image, its log, and the losses of its 8-bit image.
struct Rendered {
    rgb: image::RgbImage,
    history: Vec<stylefarm_engine::LossRecord>,
    written: stylefarm_engine::Losses,
}

fn render(vgg: &Arc<Vgg19>, params: &RenderParams, sources: &Sources, w: usize, h: usize) -> Result<Rendered> {
    let device = Device::Cpu;
    let mut session = Session::new(vgg.clone(), params.clone(), sources.at(w, h, &device)?, None)?;
    let resample: Resample<'_> = &|sw, sh| sources.at(sw, sh, &device);
    match session.run(&mut Quiet, Cadence::default(), resample)? {
        Outcome::Finished(_) => {}
        Outcome::Stopped => bail!("the render stopped"),
    }
    let image = session.image().context("the finished render has no image")?;
    let (rgb, iw, ih) = pixels::to_rgb(image)?;
    let rgb = image::RgbImage::from_raw(iw as u32, ih as u32, rgb).context("the render's pixels do not fill its size")?;
    let written = score(vgg, params, sources, &rgb)?;
    Ok(Rendered { rgb, history: session.history().to_vec(), written })
}

/// The losses of an 8-bit image under a render's parameters: a render of
/// no iterations that starts from it (`farmctl render --iters 0 --init`).
fn score(vgg: &Arc<Vgg19>, params: &RenderParams, sources: &Sources, rgb: &image::RgbImage) -> Result<stylefarm_engine::Losses> {
    let params = RenderParams { iterations: 0, init: stylefarm_engine::Init::Image, scales: Vec::new(), coarse_iters: None, ..params.clone() };
    let with_image = Sources { content: sources.content.clone(), styles: sources.styles.clone(), init: Some(image::DynamicImage::ImageRgb8(rgb.clone()).into_rgb16()) };
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let device = Device::Cpu;
    let mut session = Session::new(vgg.clone(), params, with_image.at(w, h, &device)?, with_image.init_at(w, h, &device)?)?;
    let resample: Resample<'_> = &|sw, sh| with_image.at(sw, sh, &device);
    session.run(&mut Quiet, Cadence::default(), resample)?;
    Ok(session.history().last().context("scoring left no record")?.losses)
}

pub fn run(args: SweepArgs) -> Result<()> {
    std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    let contents = expand(&args.content, "content")?;
    let styles = expand(&args.style, "style")?;
    let (w, h) = size::parse_size(&args.size)?;
    let (w, h) = (w as usize, h as usize);
    // Every configuration is parsed and checked before the first render.
    let configs: Vec<(String, RenderParams)> = args
        .config
        .iter()
        .map(|c| Ok((c.clone(), RenderParams::from_json(c).with_context(|| format!("--config `{c}`"))?)))
        .collect::<Result<_>>()?;
    for (c, p) in &configs {
        p.validate(1).with_context(|| format!("--config `{c}`"))?;
        if p.init == stylefarm_engine::Init::Image {
            bail!("--config `{c}`: a sweep has no init image to start from");
        }
    }
    std::fs::create_dir_all(&args.output).with_context(|| format!("cannot create {}", args.output.display()))?;
    let weights = weights::load(&weights::weights_path(args.weights.as_deref()), &Device::Cpu)?;
    let avg = Arc::new(Vgg19::new(&weights, Pooling::Avg, DType::F32)?);
    // The max-pooling network only when a configuration asks for it.
    let max = match configs.iter().any(|(_, p)| p.pooling == Pooling::Max) {
        true => Some(Arc::new(Vgg19::new(&weights, Pooling::Max, DType::F32)?)),
        false => None,
    };
    let vgg = |p: &RenderParams| match (&max, p.pooling) {
        (Some(max), Pooling::Max) => max.clone(),
        _ => avg.clone(),
    };
    let limits = ImageLimits::default();

    let results_path = args.output.join("results.jsonl");
    let mut results = std::fs::File::create(&results_path).with_context(|| format!("cannot write {}", results_path.display()))?;
    const CELL: u32 = 160;
    let columns = 3 + configs.len() as u32;
    let rows = (contents.len() * styles.len() * args.seeds.len()) as u32;
    let mut sheet = image::RgbImage::from_pixel(columns * CELL, rows.max(1) * CELL, image::Rgb([255, 255, 255]));
    let place = |sheet: &mut image::RgbImage, img: &image::RgbImage, col: u32, row: u32| {
        let t = image::imageops::thumbnail(img, CELL - 4, CELL - 4);
        let (x, y) = (col * CELL + (CELL - t.width()) / 2, row * CELL + (CELL - t.height()) / 2);
        image::imageops::overlay(sheet, &t, x as i64, y as i64);
    };

    println!(
        "farmctl sweep: {w}x{h}, {} threads; as good as the recipe = style ≤ that of the recipe's 8-bit image, content ≤ {CONTENT_SLACK} × it; losses of each 8-bit image",
        args.threads
    );
    for (i, (c, _)) in configs.iter().enumerate() {
        println!("  config {}: {c}", i + 1);
    }
    println!("{:<12} {:<26} {:>4} {:>6} {:>8} {:>9} {:>9} {:>7} {:>7} {:>5} {:>7}", "content", "style", "seed", "config", "seconds", "content", "style", "to bar", "ratio", "final", "png/log");
    let mut ratios: Vec<Vec<Option<f64>>> = vec![Vec::new(); configs.len()];
    let mut row = 0u32;
    for content in &contents {
        for style in &styles {
            let sources = Sources {
                content: image_io::load_rgb(content, limits)?,
                styles: vec![image_io::load_rgb(style, limits)?],
                init: None,
            };
            let (cn, sn) = (stem(content), stem(style));
            for &seed in &args.seeds {
                place(&mut sheet, &sources.content, 0, row);
                place(&mut sheet, &sources.styles[0], 1, row);
                let recipe_params = RenderParams { seed, ..RenderParams::default() };
                let recipe = render(&vgg(&recipe_params), &recipe_params, &sources, w, h).with_context(|| format!("the recipe on {cn} × {sn}"))?;
                let last = recipe.history.last().context("the recipe left no record")?;
                let bar = Bar::of_recipe(&recipe.written);
                let recipe_seconds = last.seconds;
                place(&mut sheet, &recipe.rgb, 2, row);
                let mut emit = |config: &str, r: &Rendered, ratios: Option<&mut Vec<Option<f64>>>| -> Result<()> {
                    let last = r.history.last().context("a render left no record")?;
                    let hit = bar.first_met(&r.history).map(|x| x.seconds);
                    let ratio = hit.map(|s| s / recipe_seconds);
                    let final_as_good = bar.met_by(&r.written);
                    let png_over_log = r.written.total / last.losses.total;
                    // One line of results.jsonl; `seconds_to_recipe` and
                    // `ratio` are null when the render never met the bar.
                    // `final_*` are the written image's losses, `logged_*`
                    // the log's last record's.
                    let line = serde_json::json!({
                        "content": cn, "style": sn, "seed": seed, "config": config,
                        "seconds": last.seconds,
                        "final_content": r.written.content, "final_style": r.written.style, "final_total": r.written.total,
                        "logged_content": last.losses.content, "logged_style": last.losses.style, "logged_total": last.losses.total,
                        "png_over_log": png_over_log,
                        "seconds_to_recipe": hit, "ratio": ratio, "final_as_good": final_as_good,
                    });
                    writeln!(results, "{line}")?;
                    let show = |v: Option<f64>, digits: usize| v.map_or("never".to_string(), |v| format!("{v:.digits$}"));
                    println!(
                        "{:<12} {:<26} {:>4} {:>6} {:>8.1} {:>9.3e} {:>9.3e} {:>7} {:>7} {:>5} {:>7.4}",
                        cn,
                        sn,
                        seed,
                        config,
                        last.seconds,
                        r.written.content,
                        r.written.style,
                        show(hit, 1),
                        show(ratio, 3),
                        if final_as_good { "yes" } else { "no" },
                        png_over_log
                    );
                    if let Some(v) = ratios {
                        v.push(ratio);
                    }
                    Ok(())
                };
                emit("recipe", &recipe, None)?;
                recipe.rgb.save(args.output.join(format!("{cn}_{sn}_s{seed}_recipe.png")))?;
                for (i, (c, params)) in configs.iter().enumerate() {
                    let params = RenderParams { seed, ..params.clone() };
                    let fast = render(&vgg(&params), &params, &sources, w, h).with_context(|| format!("config {c} on {cn} × {sn}"))?;
                    emit(&format!("{}", i + 1), &fast, Some(&mut ratios[i]))?;
                    place(&mut sheet, &fast.rgb, 3 + i as u32, row);
                    fast.rgb.save(args.output.join(format!("{cn}_{sn}_s{seed}_config{}.png", i + 1)))?;
                }
                row += 1;
                let sheet_path = args.output.join("sheet.png");
                sheet.save(&sheet_path).with_context(|| format!("cannot write {}", sheet_path.display()))?;
            }
        }
    }
    println!("sheet: {} (rows in the table's order; columns: content, style, recipe, config 1, …)", args.output.join("sheet.png").display());
    for (i, r) in ratios.iter().enumerate() {
        let met: Vec<f64> = r.iter().flatten().copied().collect();
        let worst = if met.len() == r.len() { met.iter().cloned().fold(0.0, f64::max) } else { f64::INFINITY };
        // A render that never met the bar counts as infinitely slow.
        let all: Vec<f64> = r.iter().map(|x| x.unwrap_or(f64::INFINITY)).collect();
        println!(
            "config {}: met the recipe's bar in {} of {} renders; time to it / recipe's time: median {:.3}, worst {:.3}",
            i + 1,
            met.len(),
            r.len(),
            median(all),
            worst
        );
    }
    Ok(())
}
