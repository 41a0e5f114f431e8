//! The farm commands: `up`, `submit`, `status`, `watch`, `fetch`, `cancel`.
//! They speak only the gRPC contract in `farm.proto`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use stylefarm_engine::RenderParams;
use stylefarm_proto as pb;
use stylefarm_proto::farm_client::FarmClient;
use stylefarm_proto::security::{Bearer, ClientSecurity};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::render::{parse_init, ParamFlags};

/// Where the coordinator is and how to present ourselves to it.
pub struct Conn {
    pub url: String,
    pub security: ClientSecurity,
}

async fn client(conn: &Conn) -> Result<FarmClient<InterceptedService<Channel, Bearer>>> {
    let channel = conn
        .security
        .connect(&conn.url)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (is `farmctl up` or farm-coordinator running?)"))?;
    let bearer = conn.security.bearer().map_err(anyhow::Error::msg)?;
    Ok(FarmClient::with_interceptor(channel, bearer).max_decoding_message_size(256 << 20).max_encoding_message_size(256 << 20))
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

// ------------------------------------------------------------------ submit

#[derive(Args)]
pub struct SubmitArgs {
    /// Content images: files or globs (repeat or quote a glob).
    #[arg(long, required = true)]
    content: Vec<String>,
    /// Style images: files or globs.
    #[arg(long, required = true)]
    style: Vec<String>,
    /// Parameter variants, each `key=value,...` over the flags below
    /// (keys: alpha, beta, tv_weight, lr, iterations, optimizer, pooling,
    /// noise_ratio, seed, init). Repeat for more variants.
    #[arg(long)]
    variant: Vec<String>,
    #[arg(long, default_value = "")]
    name: String,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Render size WIDTHxHEIGHT (default: --max-side of each content).
    #[arg(long, conflicts_with = "max_side")]
    size: Option<String>,
    #[arg(long, default_value_t = 512)]
    max_side: u32,
    #[command(flatten)]
    params: ParamFlags,
    /// Checkpoint every N iterations (0 = the coordinator's default).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: u32,
    #[arg(long, default_value_t = 0)]
    snapshot_every: u32,
    #[arg(long)]
    json: bool,
}

/// Expands files and globs, sorted, each once; a pattern that matches
/// nothing is an error naming it.
fn expand(patterns: &[String], role: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in patterns {
        let matches: Vec<PathBuf> = glob::glob(p).with_context(|| format!("--{role} `{p}` is not a valid glob"))?.filter_map(|m| m.ok()).filter(|m| m.is_file()).collect();
        if matches.is_empty() {
            bail!("--{role} `{p}` matches no file");
        }
        out.extend(matches);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn upload(path: &Path) -> Result<pb::InputImage> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > 200 << 20 {
        bail!("{} is {} MB; uploads are limited to 200 MB", path.display(), meta.len() >> 20);
    }
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(pb::InputImage { name, source: Some(pb::input_image::Source::Data(data)) })
}

/// Applies `key=value,…` to the base parameters.
fn variant(base: &RenderParams, spec: &str) -> Result<RenderParams> {
    let mut v = serde_json::to_value(base)?;
    let obj = v.as_object_mut().context("parameters are an object")?;
    for pair in spec.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, val) = pair.split_once('=').with_context(|| format!("--variant `{spec}`: `{pair}` is not key=value"))?;
        let key = match k.trim() {
            "iters" => "iterations",
            k => k,
        };
        if !obj.contains_key(key) || matches!(key, "content_layers" | "style_layers" | "style_blend") {
            bail!("--variant `{spec}`: `{key}` is not a parameter a variant can set");
        }
        let parsed = serde_json::from_str(val.trim()).unwrap_or_else(|_| serde_json::Value::String(val.trim().to_string()));
        obj.insert(key.to_string(), parsed);
    }
    serde_json::from_value(v).with_context(|| format!("--variant `{spec}`"))
}

pub async fn submit(url: &Conn, a: SubmitArgs) -> Result<()> {
    let init = match parse_init(&a.params.init) {
        stylefarm_engine::Init::Image => bail!("--init `{}`: a collection takes blend, content or noise", a.params.init),
        init => init,
    };
    let base = a.params.to_params(init, Vec::new())?;
    let variants = if a.variant.is_empty() { vec![base.clone()] } else { a.variant.iter().map(|v| variant(&base, v)).collect::<Result<_>>()? };
    for (i, v) in variants.iter().enumerate() {
        v.validate(1).with_context(|| format!("variant {i}"))?;
    }
    let (width, height, max_side) = match &a.size {
        Some(s) => {
            let (w, h) = stylefarm_shared::size::parse_size(s)?;
            (w, h, 0)
        }
        None => (0, 0, a.max_side),
    };
    let contents = expand(&a.content, "content")?.iter().map(|p| upload(p)).collect::<Result<Vec<_>>>()?;
    let styles = expand(&a.style, "style")?.iter().map(|p| upload(p)).collect::<Result<Vec<_>>>()?;
    let request = pb::SubmitRequest {
        name: a.name,
        contents,
        styles,
        variants_json: variants.iter().map(serde_json::to_string).collect::<Result<_, _>>()?,
        width,
        height,
        max_side,
        priority: a.priority,
        checkpoint_every: a.checkpoint_every,
        snapshot_every: a.snapshot_every,
    };
    let r = client(url).await?.submit(request).await.map_err(|s| anyhow::anyhow!("submit refused: {}", s.message()))?.into_inner();
    if a.json {
        println!("{}", serde_json::json!({"collection_id": r.collection_id, "jobs": r.jobs}));
    } else {
        eprintln!("submitted {} jobs", r.jobs);
    }
    println!("{}", r.collection_id);
    Ok(())
}

// ------------------------------------------------------------ status/watch

fn state_name(s: i32) -> &'static str {
    match pb::JobState::try_from(s) {
        Ok(pb::JobState::Queued) => "queued",
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Succeeded) => "succeeded",
        Ok(pb::JobState::Failed) => "failed",
        Ok(pb::JobState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

fn job_json(j: &pb::Job) -> serde_json::Value {
    let p = j.progress.clone().unwrap_or_default();
    serde_json::json!({
        "job_id": j.job_id, "content": j.content_name, "style": j.style_name, "variant": j.variant_index,
        "state": state_name(j.state), "attempts": j.attempts, "iteration": p.iteration, "iterations": p.iterations,
        "total_loss": p.total, "eta_seconds": p.eta_seconds, "worker": j.worker, "error": j.error,
        "output_key": j.output_key, "started_from": j.started_from,
    })
}

fn collection_json(c: &pb::Collection) -> serde_json::Value {
    serde_json::json!({
        "collection_id": c.collection_id, "name": c.name, "priority": c.priority,
        "jobs": c.jobs.iter().map(job_json).collect::<Vec<_>>(),
    })
}

pub async fn status(url: &Conn, id: &str, json: bool) -> Result<()> {
    let c = client(url).await?.get_collection(pb::CollectionRef { collection_id: id.into() }).await.map_err(status_err)?.into_inner();
    if json {
        println!("{}", serde_json::to_string_pretty(&collection_json(&c))?);
        return Ok(());
    }
    println!("collection {} ({}), {} jobs", c.collection_id, c.name, c.jobs.len());
    println!("{:<20} {:<20} {:>3} {:<10} {:>11} {:>12} {:>3}  {}", "content", "style", "var", "state", "iteration", "total loss", "try", "worker / error");
    for j in &c.jobs {
        let p = j.progress.clone().unwrap_or_default();
        let who = if j.error.is_empty() { j.worker.clone() } else { j.error.clone() };
        println!(
            "{:<20} {:<20} {:>3} {:<10} {:>5}/{:<5} {:>12.4e} {:>3}  {who}",
            j.content_name, j.style_name, j.variant_index, state_name(j.state), p.iteration, p.iterations, p.total, j.attempts
        );
    }
    Ok(())
}

/// Streams progress until every job has ended; Ok(true) if all succeeded.
pub async fn watch(url: &Conn, id: &str) -> Result<bool> {
    let mut stream = client(url).await?.watch(pb::CollectionRef { collection_id: id.into() }).await.map_err(status_err)?.into_inner();
    let multi = MultiProgress::new();
    let overall = multi.add(ProgressBar::new(0));
    overall.set_style(ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} jobs  ETA {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "));
    overall.set_prefix("collection");
    let job_style = ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} it  {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ");
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut states: BTreeMap<String, i32> = BTreeMap::new();
    let mut last = None;
    loop {
        let c = match stream.message().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(s) => bail!("watch ended: {}", s.message()),
        };
        overall.set_length(c.jobs.len() as u64);
        let done = c.jobs.iter().filter(|j| j.state >= pb::JobState::Succeeded as i32).count();
        overall.set_position(done as u64);
        let eta = c.jobs.iter().filter_map(|j| j.progress.as_ref()).map(|p| p.eta_seconds).fold(0f64, f64::max);
        overall.set_message(format!("{eta:.0}s"));
        for j in &c.jobs {
            let label = format!("{} × {} v{}", j.content_name, j.style_name, j.variant_index);
            if states.insert(j.job_id.clone(), j.state) != Some(j.state) && multi.is_hidden() {
                eprintln!("{label}: {}{}", state_name(j.state), if j.error.is_empty() { String::new() } else { format!(" ({})", j.error) });
            }
            let p = j.progress.clone().unwrap_or_default();
            if j.state == pb::JobState::Running as i32 {
                let bar = bars.entry(j.job_id.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(p.iterations as u64));
                    b.set_style(job_style.clone());
                    b.set_prefix(label.clone());
                    b
                });
                bar.set_length(p.iterations as u64);
                bar.set_position(p.iteration as u64);
                bar.set_message(format!("total {:.3e}  ETA {:.0}s", p.total, p.eta_seconds));
            } else if let Some(b) = bars.remove(&j.job_id) {
                b.finish_and_clear();
                multi.remove(&b);
            }
        }
        last = Some(c);
    }
    overall.finish_and_clear();
    let c = last.context("the coordinator sent nothing")?;
    let ok = c.jobs.iter().filter(|j| j.state == pb::JobState::Succeeded as i32).count();
    eprintln!("{ok} of {} jobs succeeded", c.jobs.len());
    for j in c.jobs.iter().filter(|j| j.state != pb::JobState::Succeeded as i32) {
        eprintln!("  {} × {} v{}: {} {}", j.content_name, j.style_name, j.variant_index, state_name(j.state), j.error);
    }
    Ok(ok == c.jobs.len())
}

pub async fn cancel(url: &Conn, id: &str) -> Result<()> {
    let c = client(url).await?.cancel(pb::CollectionRef { collection_id: id.into() }).await.map_err(status_err)?.into_inner();
    let cancelled = c.jobs.iter().filter(|j| j.state == pb::JobState::Cancelled as i32).count();
    println!("cancelled {cancelled} of {} jobs (running ones stop at their next heartbeat)", c.jobs.len());
    Ok(())
}

// ------------------------------------------------------------------- fetch

/// Downloads every finished image to `dir` and builds a contact sheet: one
/// row per content, one column per style (each style's variants side by
/// side), empty where a job did not succeed.
pub async fn fetch(url: &Conn, id: &str, dir: &Path) -> Result<()> {
    let mut farm = client(url).await?;
    let c = farm.get_collection(pb::CollectionRef { collection_id: id.into() }).await.map_err(status_err)?.into_inner();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    const CELL: u32 = 192;
    let thumb = |img: &image::RgbImage| image::imageops::thumbnail(img, CELL, CELL);
    let cols = (c.styles * c.variants.max(1)) as u32;
    let rows = c.contents;
    let mut sheet = image::RgbImage::from_pixel(cols.max(1) * CELL, rows.max(1) * CELL, image::Rgb([255, 255, 255]));
    let place = |sheet: &mut image::RgbImage, img: &image::RgbImage, col: u32, row: u32| {
        let t = thumb(img);
        let (x, y) = (col * CELL + (CELL - t.width()) / 2, row * CELL + (CELL - t.height()) / 2);
        image::imageops::overlay(sheet, &t, x as i64, y as i64);
    };
    let mut written = 0;
    for j in c.jobs.iter().filter(|j| j.state == pb::JobState::Succeeded as i32) {
        let data = farm
            .fetch(pb::FetchRequest { collection_id: id.into(), key: j.output_key.clone() })
            .await
            .map_err(status_err)?
            .into_inner()
            .data;
        // Names were checked at submit; keep only safe characters anyway.
        let safe = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect::<String>();
        let name = format!("{}_{}_v{}.png", safe(&j.content_name).trim_start_matches('.'), safe(&j.style_name), j.variant_index);
        let path = dir.join(&name);
        std::fs::write(&path, &data).with_context(|| format!("cannot write {}", path.display()))?;
        let img = image::load_from_memory(&data).with_context(|| format!("{name} from the farm is not an image"))?.to_rgb8();
        place(&mut sheet, &img, j.style_index * c.variants.max(1) + j.variant_index, j.content_index);
        written += 1;
    }
    let sheet_path = dir.join("contact_sheet.png");
    sheet.save(&sheet_path).with_context(|| format!("cannot write {}", sheet_path.display()))?;
    eprintln!("fetched {written} of {} images into {}", c.jobs.len(), dir.display());
    println!("{}", sheet_path.display());
    Ok(())
}

// ---------------------------------------------------------------------- up

#[derive(Args)]
pub struct UpArgs {
    /// Holds the SQLite database and the storage folder.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Number of local workers (each pins the CPU, or one cuda:N each with --gpus).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Engine threads per worker (default: cores / workers).
    #[arg(long)]
    threads: Option<usize>,
    /// Give worker i the device cuda:i instead of cpu.
    #[arg(long)]
    gpus: bool,
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: String,
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!("{} not found next to farmctl; build it with `cargo build --release --bins`", path.display());
    }
    Ok(path)
}

/// Starts a coordinator and the workers, prints the coordinator's URL and
/// waits for Ctrl-C; then stops the workers (SIGTERM: they checkpoint and
/// release) and the coordinator.
pub fn up(a: UpArgs) -> Result<()> {
    let mut coordinator = Command::new(sibling("farm-coordinator")?)
        .args(["--listen", &a.listen, "--data-dir"])
        .arg(&a.data_dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start farm-coordinator")?;
    let stdout = coordinator.stdout.take().context("no coordinator stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let Some(addr) = line.trim().strip_prefix("farm-coordinator listening on ") else {
        let _ = coordinator.kill();
        bail!("farm-coordinator did not start: {line}");
    };
    let url = format!("http://{addr}");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = a.threads.unwrap_or((cores / a.workers.max(1)).max(1));
    let mut workers: Vec<Child> = Vec::new();
    for i in 0..a.workers {
        let device = if a.gpus { format!("cuda:{i}") } else { "cpu".to_string() };
        workers.push(
            Command::new(sibling("farm-worker")?)
                .args(["--coordinator", &url, "--device", &device, "--name", &format!("local{i}"), "--threads", &threads.to_string()])
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start farm-worker")?,
        );
    }
    eprintln!("farm up: coordinator {url}, {} workers ({threads} threads each), data in {}", a.workers, a.data_dir.display());
    println!("{url}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(stylefarm_shared::telemetry::stop_signal());
    eprintln!("farm down: stopping workers");
    for w in &workers {
        let _ = Command::new("kill").args(["-TERM", &w.id().to_string()]).status();
    }
    for mut w in workers {
        let _ = w.wait();
    }
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    Ok(())
}
