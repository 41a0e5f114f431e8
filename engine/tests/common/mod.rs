//! What the engine's integration tests share: a narrow VGG with random
//! weights (VGG-19's topology, 3–8 channels) and random images.
#![allow(dead_code)]

use stylefarm_engine::{DType, Device, InputConvention, Tensor, VggWeights};

/// A VGG with VGG-19's topology but 3–8 channels, He-initialised, in f64.
pub fn narrow_vgg(convention: InputConvention) -> VggWeights {
    let dev = Device::Cpu;
    let widths = [4, 4, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7, 8, 8, 8, 8];
    let mut c_in = 3;
    let mut layers = Vec::new();
    for &c_out in &widths {
        let std = (2.0 / (9.0 * c_in as f64)).sqrt();
        let w = Tensor::randn(0f64, std, (c_out, c_in, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f64, 0.1, c_out, &dev).unwrap();
        layers.push((w, b));
        c_in = c_out;
    }
    VggWeights { layers, convention, source: "random".into() }
}

/// A random image `[1, 3, h, w]` in the optimisation space, in f64.
pub fn image(h: usize, w: usize) -> Tensor {
    Tensor::randn(0f64, 50.0, (1, 3, h, w), &Device::Cpu).unwrap()
}

/// The same image in f32.
pub fn image_f32(h: usize, w: usize) -> Tensor {
    image(h, w).to_dtype(DType::F32).unwrap()
}
