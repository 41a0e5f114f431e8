//! A render's checkpoint as one self-checking safetensors file: the image,
//! the optimizer's state, the iteration, the loss history, and what the
//! render was (its parameters and a hash of each input), so a resume can
//! refuse to continue a different render.
//!
//! Tensors: `image`; Adam: `adam.m`, `adam.v`; L-BFGS: `lbfgs.s.{i}`,
//! `lbfgs.y.{i}`, `lbfgs.grad`. Metadata (strings): `format`, `iteration`,
//! `optimizer`, `adam.step` or `lbfgs.evaluations` and `lbfgs.losses`,
//! `params` (JSON), `inputs` (JSON), `history` (JSON), and `checksum`: the
//! SHA-256 of every other metadata entry and every tensor (name, shape,
//! bytes), in name order.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};
use crate::lbfgs::LbfgsState;
use crate::optim::AdamState;
use crate::loss::LossRecord;
use crate::params::RenderParams;
use crate::render::{OptimizerState, RenderState};

const FORMAT: &str = "stylefarm-checkpoint-v1";

/// What a render is, apart from how far it got: a resume must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The parameters; `iterations` is not compared (a render may be extended).
    pub params: RenderParams,
    /// Render size `(width, height)`.
    pub size: (usize, usize),
    /// SHA-256 of the preprocessed content pixels.
    pub content: String,
    /// SHA-256 of each preprocessed style image.
    pub styles: Vec<String>,
    /// SHA-256 of the init image, if one was given.
    pub init: Option<String>,
}

/// SHA-256 (hex) of a tensor's values as little-endian f32.
pub fn tensor_hash(t: &Tensor) -> Result<String> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut h = Sha256::new();
    for x in v {
        h.update(x.to_le_bytes());
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Identity {
    /// The identity of a render of `content` (`[1, 3, H, W]`) in `styles`.
    pub fn new(params: &RenderParams, content: &Tensor, styles: &[Tensor], init: Option<&Tensor>) -> Result<Self> {
        let (_, _, h, w) = content.dims4()?;
        Ok(Self {
            params: params.clone(),
            size: (w, h),
            content: tensor_hash(content)?,
            styles: styles.iter().map(tensor_hash).collect::<Result<_>>()?,
            init: init.map(tensor_hash).transpose()?,
        })
    }

    /// Why `self` (the checkpoint's) and `now` are different renders, or
    /// `None` if a resume may continue.
    pub fn difference(&self, now: &Identity) -> Option<String> {
        if self.size != now.size {
            return Some(format!("the render size differs: checkpoint {}x{}, now {}x{}", self.size.0, self.size.1, now.size.0, now.size.1));
        }
        if self.content != now.content {
            return Some("the content image differs".into());
        }
        if self.styles != now.styles {
            return Some("the style image(s) differ".into());
        }
        if self.init != now.init {
            return Some("the init image differs".into());
        }
        // The iterations do not make it another render (it may be extended;
        // how it is run is not among the parameters at all).
        let same = |p: &RenderParams| serde_json::to_value(RenderParams { iterations: 0, ..p.clone() }).ok();
        let (a, b) = (same(&self.params)?, same(&now.params)?);
        let (a, b) = (a.as_object()?, b.as_object()?);
        let mut keys: Vec<&String> = a.keys().collect();
        keys.sort();
        for k in keys {
            if a.get(k) != b.get(k) {
                return Some(format!("parameter `{k}` differs: checkpoint {}, now {}", a[k], b.get(k).cloned().unwrap_or_default()));
            }
        }
        None
    }
}

/// Everything a checkpoint holds.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub state: RenderState,
    pub history: Vec<LossRecord>,
    pub identity: Identity,
}

fn f32_bytes(t: &Tensor) -> Result<(Vec<usize>, Vec<u8>)> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((t.dims().to_vec(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
}

fn checksum(meta: &BTreeMap<String, String>, tensors: &BTreeMap<String, (Vec<usize>, Vec<u8>)>) -> String {
    let mut h = Sha256::new();
    for (k, v) in meta.iter().filter(|(k, _)| *k != "checksum") {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    for (name, (shape, bytes)) in tensors {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(format!("{shape:?}").as_bytes());
        h.update(bytes);
    }
    hex(&h.finalize())
}

fn corrupt(what: impl Into<String>) -> EngineError {
    EngineError::Checkpoint(what.into())
}

fn json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| corrupt(e.to_string()))
}

impl Checkpoint {
    /// The file's bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut tensors = BTreeMap::new();
        let mut meta = BTreeMap::new();
        tensors.insert("image".to_string(), f32_bytes(&self.state.image)?);
        match &self.state.optimizer {
            OptimizerState::Adam(a) => {
                meta.insert("optimizer".into(), "adam".into());
                meta.insert("adam.step".into(), a.step.to_string());
                tensors.insert("adam.m".into(), f32_bytes(&a.m)?);
                tensors.insert("adam.v".into(), f32_bytes(&a.v)?);
            }
            OptimizerState::Lbfgs(l) => {
                meta.insert("optimizer".into(), "lbfgs".into());
                meta.insert("lbfgs.evaluations".into(), l.evaluations.to_string());
                meta.insert("lbfgs.pairs".into(), l.s.len().to_string());
                for (i, (s, y)) in l.s.iter().zip(&l.y).enumerate() {
                    tensors.insert(format!("lbfgs.s.{i}"), f32_bytes(s)?);
                    tensors.insert(format!("lbfgs.y.{i}"), f32_bytes(y)?);
                }
                if let Some((losses, g)) = &l.current {
                    meta.insert("lbfgs.losses".into(), json(losses)?);
                    tensors.insert("lbfgs.grad".into(), f32_bytes(g)?);
                }
            }
        }
        meta.insert("format".into(), FORMAT.into());
        meta.insert("iteration".into(), self.state.iteration.to_string());
        meta.insert("identity".into(), json(&self.identity)?);
        meta.insert("history".into(), json(&self.history)?);
        meta.insert("checksum".into(), checksum(&meta, &tensors));
        let views = tensors
            .iter()
            .map(|(name, (shape, bytes))| {
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| corrupt(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, Some(meta.into_iter().collect::<HashMap<_, _>>())).map_err(|e| corrupt(e.to_string()))
    }

    /// Parses and verifies a checkpoint; any damage is an error that says so.
    pub fn decode(bytes: &[u8], device: &Device) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| corrupt(format!("not a readable checkpoint ({e})")))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(format!("not a readable checkpoint ({e})")))?;
        let meta: BTreeMap<String, String> = header.metadata().clone().unwrap_or_default().into_iter().collect();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(corrupt(format!("not a {FORMAT} file")));
        }
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(corrupt(format!("tensor {name} is not f32")));
            }
            tensors.insert(name, (view.shape().to_vec(), view.data().to_vec()));
        }
        if meta.get("checksum") != Some(&checksum(&meta, &tensors)) {
            return Err(corrupt("checksum mismatch (the file is damaged)"));
        }
        let get = |k: &str| meta.get(k).ok_or_else(|| corrupt(format!("metadata `{k}` missing")));
        let number = |k: &str| -> Result<u64> { get(k)?.parse().map_err(|_| corrupt(format!("metadata `{k}` is not a number"))) };
        let tensor = |name: &str| -> Result<Tensor> {
            let (shape, bytes) = tensors.get(name).ok_or_else(|| corrupt(format!("tensor `{name}` missing")))?;
            let v: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            Ok(Tensor::from_vec(v, shape.clone(), device)?)
        };
        let parse = |k: &str| -> Result<serde_json::Value> { serde_json::from_str(get(k)?).map_err(|e| corrupt(format!("metadata `{k}`: {e}"))) };
        let optimizer = match get("optimizer")?.as_str() {
            "adam" => OptimizerState::Adam(AdamState { m: tensor("adam.m")?, v: tensor("adam.v")?, step: number("adam.step")? }),
            "lbfgs" => {
                let pairs = number("lbfgs.pairs")? as usize;
                let mut l = LbfgsState::new();
                for i in 0..pairs {
                    l.s.push(tensor(&format!("lbfgs.s.{i}"))?);
                    l.y.push(tensor(&format!("lbfgs.y.{i}"))?);
                }
                l.evaluations = number("lbfgs.evaluations")?;
                if meta.contains_key("lbfgs.losses") {
                    let losses = serde_json::from_value(parse("lbfgs.losses")?).map_err(|e| corrupt(e.to_string()))?;
                    l.current = Some((losses, tensor("lbfgs.grad")?));
                }
                OptimizerState::Lbfgs(l)
            }
            other => return Err(corrupt(format!("unknown optimizer `{other}`"))),
        };
        let state = RenderState { image: tensor("image")?, optimizer, iteration: number("iteration")? as usize };
        let history = serde_json::from_value(parse("history")?).map_err(|e| corrupt(format!("history: {e}")))?;
        let identity = identity_from(parse("identity")?)?;
        Ok(Self { state, history, identity })
    }
}

/// A stored identity. Checkpoints written while the tiling and bit depth
/// were among the parameters may name them: they are how that render was
/// run, not what it is, and are dropped.
fn identity_from(mut value: serde_json::Value) -> Result<Identity> {
    if let Some(params) = value.get_mut("params").and_then(|p| p.as_object_mut()) {
        for key in crate::execution::HINTS {
            params.remove(key);
        }
    }
    serde_json::from_value(value).map_err(|e| corrupt(format!("identity: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lbfgs::LbfgsState;
    use crate::loss::Losses;

    fn sample(optimizer: OptimizerState) -> Checkpoint {
        let dev = Device::Cpu;
        let image = Tensor::randn(0f32, 1., (1, 3, 4, 5), &dev).unwrap();
        let losses = Losses { content: 1.0, style: 2.0, tv: 0.5, total: 3.5 };
        Checkpoint {
            identity: Identity::new(&RenderParams::default(), &image, &[image.clone()], None).unwrap(),
            state: RenderState { image, optimizer, iteration: 7 },
            history: vec![LossRecord { iteration: 0, losses, seconds: 0.25 }],
        }
    }

    fn same(a: &Tensor, b: &Tensor) -> bool {
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap() == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn adam_and_lbfgs_states_round_trip_exactly() {
        let dev = Device::Cpu;
        let t = || Tensor::randn(0f32, 1., (1, 3, 4, 5), &dev).unwrap();
        let adam = sample(OptimizerState::Adam(AdamState { m: t(), v: t(), step: 7 }));
        let back = Checkpoint::decode(&adam.encode().unwrap(), &dev).unwrap();
        assert!(same(&back.state.image, &adam.state.image));
        assert_eq!((back.state.iteration, back.history.clone(), back.identity.clone()), (7, adam.history.clone(), adam.identity.clone()));
        match (&back.state.optimizer, &adam.state.optimizer) {
            (OptimizerState::Adam(a), OptimizerState::Adam(b)) => assert!(same(&a.m, &b.m) && same(&a.v, &b.v) && a.step == b.step),
            _ => panic!("optimizer kind changed"),
        }
        let l = LbfgsState { s: vec![t(), t()], y: vec![t(), t()], current: Some((adam.history[0].losses, t())), evaluations: 9 };
        let lb = sample(OptimizerState::Lbfgs(l));
        let back = Checkpoint::decode(&lb.encode().unwrap(), &dev).unwrap();
        match (&back.state.optimizer, &lb.state.optimizer) {
            (OptimizerState::Lbfgs(a), OptimizerState::Lbfgs(b)) => {
                assert_eq!((a.s.len(), a.evaluations), (2, 9));
                assert!(a.s.iter().zip(&b.s).all(|(x, y)| same(x, y)) && a.y.iter().zip(&b.y).all(|(x, y)| same(x, y)));
                assert_eq!(a.current.as_ref().unwrap().0, b.current.as_ref().unwrap().0);
            }
            _ => panic!("optimizer kind changed"),
        }
    }

    #[test]
    fn any_flipped_byte_or_truncation_is_detected() {
        let dev = Device::Cpu;
        let t = Tensor::zeros((1, 3, 4, 5), DType::F32, &dev).unwrap();
        let bytes = sample(OptimizerState::Adam(AdamState { m: t.clone(), v: t, step: 1 })).encode().unwrap();
        // A flipped bit in the tensor data and one in the JSON header.
        for pos in [bytes.len() - 3, 40] {
            let mut bad = bytes.clone();
            bad[pos] ^= 0x01;
            assert!(Checkpoint::decode(&bad, &dev).is_err(), "flip at {pos} went unnoticed");
        }
        let err = Checkpoint::decode(&bytes[..bytes.len() / 2], &dev).unwrap_err().to_string();
        assert!(err.contains("checkpoint"), "{err}");
    }

    #[test]
    fn difference_names_what_changed() {
        let c = sample(OptimizerState::Lbfgs(LbfgsState::new())).identity;
        assert_eq!(c.difference(&c), None);
        let longer = Identity { params: RenderParams { iterations: 900, ..c.params.clone() }, ..c.clone() };
        assert_eq!(c.difference(&longer), None, "extending a render is allowed");
        let alpha = Identity { params: RenderParams { alpha: 0.5, ..c.params.clone() }, ..c.clone() };
        assert!(c.difference(&alpha).unwrap().contains("`alpha`"));
        let other = Identity { content: "x".into(), ..c.clone() };
        assert!(c.difference(&other).unwrap().contains("content image"));
    }

    #[test]
    fn an_identity_written_with_the_tiling_among_the_parameters_still_reads() {
        let image = Tensor::zeros((1, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let identity = Identity::new(&RenderParams::default(), &image, &[image.clone()], None).unwrap();
        let mut value = serde_json::to_value(&identity).unwrap();
        let params = value["params"].as_object_mut().unwrap();
        params.insert("tile".into(), 512.into());
        params.insert("keep_tiles".into(), 3.into());
        params.insert("bit_depth".into(), 16.into());
        let back = identity_from(value).unwrap();
        assert_eq!(back.difference(&identity), None);
        assert_eq!(back.params, RenderParams::default());
    }
}
