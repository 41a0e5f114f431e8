//! What the engine's integration tests share: a narrow VGG with random
//! weights (VGG-19's topology, 3–8 channels) and random images.
#![allow(dead_code)]

use stylefarm_engine::{DType, Device, InputConvention, Tensor, VggWeights};

/// A VGG with VGG-19's topology but 3–8 channels, He-initialised, in f64.
pub fn narrow_vgg(convention: InputConvention) -> VggWeights {
    narrow_vgg_from(convention, "random", |std, shape| Tensor::randn(0f64, std, shape, &Device::Cpu).unwrap())
}

/// [`narrow_vgg`]'s layers, each tensor drawn by `draw(std, shape)`.
fn narrow_vgg_from(convention: InputConvention, source: &str, mut draw: impl FnMut(f64, &[usize]) -> Tensor) -> VggWeights {
    let widths = [4, 4, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7, 8, 8, 8, 8];
    let mut c_in = 3;
    let mut layers = Vec::new();
    for &c_out in &widths {
        let std = (2.0 / (9.0 * c_in as f64)).sqrt();
        layers.push((draw(std, &[c_out, c_in, 3, 3]), draw(0.1, &[c_out])));
        c_in = c_out;
    }
    VggWeights { layers, convention, source: source.into() }
}

/// A random image `[1, 3, h, w]` in the optimisation space, in f64.
pub fn image(h: usize, w: usize) -> Tensor {
    Tensor::randn(0f64, 50.0, (1, 3, h, w), &Device::Cpu).unwrap()
}

/// The same image in f32.
pub fn image_f32(h: usize, w: usize) -> Tensor {
    image(h, w).to_dtype(DType::F32).unwrap()
}

/// Normal samples from a fixed seed (splitmix64 + Box-Muller): tests that
/// compare two float paths to a tolerance use them, so a run is the same
/// run every time.
pub struct Seeded(u64);

impl Seeded {
    pub fn new(seed: u64) -> Self {
        Seeded(seed)
    }

    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn normal(&mut self, mean: f64, std: f64) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        mean + std * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    pub fn tensor(&mut self, mean: f64, std: f64, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| self.normal(mean, std)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// [`narrow_vgg`] drawn from this generator.
    pub fn narrow_vgg(&mut self, convention: InputConvention) -> VggWeights {
        narrow_vgg_from(convention, "seeded", |std, shape| self.tensor(0.0, std, shape))
    }

    /// [`image`] drawn from this generator.
    pub fn image(&mut self, h: usize, w: usize) -> Tensor {
        self.tensor(0.0, 50.0, &[1, 3, h, w])
    }
}
