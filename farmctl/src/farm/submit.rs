//! `farmctl submit`: uploads the images and asks for every content × style
//! × variant; prints the collection id.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use stylefarm_engine::variants::{VARIANT_KEYS, VARIANT_KEYS_TEXT};
use stylefarm_engine::{Init, JobParams, Preset};
use stylefarm_proto as pb;

use super::{call, Coordinators};
use crate::flags::ParamFlags;

#[derive(Args)]
pub struct SubmitArgs {
    /// Content images: files or globs (repeat or quote a glob).
    #[arg(long, required = true)]
    content: Vec<String>,
    /// Style images: files or globs.
    #[arg(long, required = true)]
    style: Vec<String>,
    /// Parameter variants, each `key=value,...` over the flags below; a
    /// list in brackets (`scales=[0.25,0.5]`, `style_layers=[conv1_1:1,
    /// conv4_1:2]`). Repeat for more variants: `--variant preset=recipe
    /// --variant preset=fast` renders both.
    #[arg(long, long_help = variant_help())]
    variant: Vec<String>,
    /// The collection's name, for people (default: its first content and
    /// style, as "harbour × starry").
    #[arg(long, default_value = "")]
    name: String,
    /// Higher runs first: before your own lower-priority work, which it
    /// preempts at a checkpoint when the farm is full.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Only workers with this label render the jobs: KEY=VALUE, as a worker's
    /// --label (pool=a100, zone=eu, device=cuda). Repeat: a worker needs them all.
    #[arg(long = "require", value_name = "KEY=VALUE", value_parser = crate::flags::label)]
    require: Vec<String>,
    /// Queue the jobs even if no worker has ever registered with the labels
    /// --require asks for (without it, such a submit is refused: a typo
    /// would wait forever).
    #[arg(long)]
    wait_for_pool: bool,
    /// Render size WIDTHxHEIGHT (default: --max-side of each content).
    #[arg(long, conflicts_with = "max_side")]
    size: Option<String>,
    /// Longer side of each render when --size is not given (each content
    /// keeps its aspect).
    #[arg(long, default_value_t = 512)]
    max_side: u32,
    #[command(flatten)]
    params: ParamFlags,
    /// Checkpoint every N iterations (0 = the coordinator's default).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: u32,
    /// Write snapshot_0010.png … every N iterations beside each job's
    /// output (0 = never).
    #[arg(long, default_value_t = 0)]
    snapshot_every: u32,
    /// When the collection ends, the coordinator POSTs a signed JSON
    /// summary here (a URL under one of its --notify-prefix values).
    #[arg(long, value_name = "URL", default_value = "")]
    notify: String,
    /// Print the SubmitResponse as farm.proto's JSON instead of the id.
    #[arg(long)]
    json: bool,
}

/// Expands files and globs in the order given (each glob's matches sorted),
/// each file once; a pattern that matches nothing is an error naming it.
/// The order is the collection's row or column order, and the order
/// `--style-blend`'s weights apply in, as with `farmctl render`.
pub fn expand(patterns: &[String], role: &str) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in patterns {
        let mut matches: Vec<PathBuf> = glob::glob(p).with_context(|| format!("--{role} `{p}` is not a valid glob"))?.filter_map(|m| m.ok()).filter(|m| m.is_file()).collect();
        if matches.is_empty() {
            bail!("--{role} `{p}` matches no file");
        }
        matches.sort();
        for m in matches {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
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

/// `--variant`'s long help: what it takes, and every key, from the one
/// list.
fn variant_help() -> String {
    format!(
        "Parameter variants, each `key=value,...` over the flags below; a list in brackets (`scales=[0.25,0.5]`, \
         `style_layers=[conv1_1:1,conv4_1:2]`). Repeat for more variants: `--variant preset=recipe --variant preset=fast` \
         renders both.\n\nKeys: {VARIANT_KEYS_TEXT}."
    )
}

/// A variant's `key=value` pairs: split at commas outside brackets and
/// quotes, so a list (`scales=[0.25,0.5]`) is one value.
fn split_pairs(spec: &str) -> Vec<&str> {
    let (mut pairs, mut depth, mut quoted, mut start) = (Vec::new(), 0i32, false, 0);
    for (i, ch) in spec.char_indices() {
        match ch {
            '"' => quoted = !quoted,
            '[' | '{' if !quoted => depth += 1,
            ']' | '}' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                pairs.push(&spec[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pairs.push(&spec[start..]);
    pairs
}

/// Applies `key=value,…` to the parameters the flags give. A
/// `preset=NAME` in the variant swaps the flags' preset first (the flags
/// given still apply over it), then the other keys apply.
fn variant(flags: &ParamFlags, spec: &str) -> Result<JobParams> {
    let mut pairs = Vec::new();
    let mut flags = flags.clone();
    for pair in split_pairs(spec).into_iter().filter(|p| !p.trim().is_empty()) {
        let (key, value) = crate::flags::key_value(&format!("--variant `{spec}`"), pair)?;
        match (key.as_str(), &value) {
            ("preset", serde_json::Value::String(name)) => flags.preset = Preset::parse(name).with_context(|| format!("--variant `{spec}`"))?,
            _ => pairs.push((key, value)),
        }
    }
    let mut v = serde_json::to_value(flags.to_params()?)?;
    let obj = v.as_object_mut().context("parameters are an object")?;
    if flags.bit_depth != 8 {
        obj.insert("bit_depth".into(), flags.bit_depth.into());
    }
    for (key, value) in pairs {
        if !VARIANT_KEYS.contains(&key.as_str()) {
            bail!("--variant `{spec}`: `{key}` is not a parameter a variant can set (they are: {VARIANT_KEYS_TEXT})");
        }
        obj.insert(key, value);
    }
    // A job's parameters: `tile` is refused there, by name and why.
    JobParams::from_json(&v.to_string()).with_context(|| format!("--variant `{spec}`"))
}

pub async fn submit(url: &Coordinators, a: SubmitArgs) -> Result<()> {
    let base = JobParams { render: a.params.to_params()?, bit_depth: a.params.bit_depth };
    if base.render.init == Init::Image {
        bail!("--init `{}`: a collection takes blend, content, noise or recolored", a.params.init.as_deref().unwrap_or_default());
    }
    let variants = if a.variant.is_empty() { vec![base.clone()] } else { a.variant.iter().map(|v| variant(&a.params, v)).collect::<Result<_>>()? };
    let contents = expand(&a.content, "content")?;
    let styles = expand(&a.style, "style")?;
    // --style-blend blends every style into each job (one style column).
    let blend_styles = !base.render.style_blend.is_empty();
    let styles_per_job = if blend_styles { styles.len() } else { 1 };
    for (i, v) in variants.iter().enumerate() {
        v.render.validate(styles_per_job).with_context(|| format!("variant {i}"))?;
    }
    let (width, height, max_side) = match &a.size {
        Some(s) => {
            let (w, h) = stylefarm_shared::size::parse_size(s)?;
            (w, h, 0)
        }
        None => (0, 0, a.max_side),
    };
    let contents = contents.iter().map(|p| upload(p)).collect::<Result<Vec<_>>>()?;
    let styles = styles.iter().map(|p| upload(p)).collect::<Result<Vec<_>>>()?;
    let request = pb::SubmitRequest {
        name: a.name,
        contents,
        styles,
        variants_json: variants.iter().map(JobParams::to_json).collect(),
        width,
        height,
        max_side,
        priority: a.priority,
        checkpoint_every: a.checkpoint_every,
        snapshot_every: a.snapshot_every,
        blend_styles,
        // One key for every retry of this submit: a reply lost to a
        // coordinator restart does not make a second collection.
        idempotency_key: uuid::Uuid::new_v4().to_string(),
        notify_url: a.notify,
        require: a.require,
        wait_for_pool: a.wait_for_pool,
    };
    let r = call(url, |mut c| {
        let request = request.clone();
        async move { c.submit(request).await }
    })
    .await
    .map_err(|e| anyhow::anyhow!("submit refused: {e:#}"))?
    .into_inner();
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        eprintln!("submitted {} job{}", r.jobs, if r.jobs == 1 { "" } else { "s" });
    }
    println!("{}", r.collection_id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> ParamFlags {
        crate::flags::parse_flags(&[]).unwrap()
    }

    /// Every key of the one list is taken, lists in brackets as one value
    /// and layers as the flags write them; anything else is refused
    /// naming the keys there are.
    #[test]
    fn a_variant_sets_every_key_a_job_may_set() {
        let v = variant(&flags(), "scales=[0.25,0.5],coarse_iters=50,style_layers=[conv1_1:1,conv4_1:2],seed=3").unwrap();
        assert_eq!((v.render.scales.as_slice(), v.render.coarse_iters, v.render.seed), (&[0.25, 0.5][..], Some(50), 3));
        assert_eq!(v.render.style_layers.iter().map(|l| (l.layer.as_str(), l.weight)).collect::<Vec<_>>(), [("conv1_1", 1.0), ("conv4_1", 2.0)]);
        let v = variant(&flags(), "content_layers=conv3_2,preserve_colors=luminance,bit_depth=16,optimizer=lbfgs").unwrap();
        assert_eq!((v.render.content_layers[0].layer.as_str(), v.bit_depth), ("conv3_2", 16));
        assert!(variant(&flags(), "style_blend=[0.7,0.3]").is_ok());
        for bad in ["tile=512", "betta=1"] {
            let e = format!("{:#}", variant(&flags(), bad).unwrap_err());
            assert!(e.contains(bad.split('=').next().unwrap()) && e.contains("scales, coarse_iters"), "{bad}: {e}");
        }
        assert_eq!(split_pairs(r#"a=1,b=[1,2],c="x,y",d={"e":1,"f":2}"#), ["a=1", "b=[1,2]", r#"c="x,y""#, r#"d={"e":1,"f":2}"#]);
    }
}
