//! RGB bytes ↔ the optimisation space: BGR, 0..255, minus the ImageNet mean
//! (the convention of the original Caffe VGG weights).

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};

/// Mean pixel of the VGG training set, in B, G, R order.
pub const MEAN_BGR: [f64; 3] = [103.939, 116.779, 123.68];

/// `rgb`: `h·w·3` bytes, row-major. Returns `[1, 3, h, w]` (B, G, R planes).
pub fn to_tensor(rgb: &[u8], w: usize, h: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    if w == 0 || h == 0 || rgb.len() != w * h * 3 {
        return Err(EngineError::Image(format!("{} bytes do not make a {w}x{h} RGB image", rgb.len())));
    }
    let plane = w * h;
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            // plane c holds B, G, R for c = 0, 1, 2.
            data[c * plane + i] = px[2 - c] as f32 - MEAN_BGR[c] as f32;
        }
    }
    Ok(Tensor::from_vec(data, (1, 3, h, w), device)?.to_dtype(dtype)?)
}

/// The inverse of [`to_tensor`], rounded and clamped to 0..255.
/// Returns `(rgb, w, h)`.
pub fn to_rgb(image: &Tensor) -> Result<(Vec<u8>, usize, usize)> {
    let (_, _, h, w) = image.dims4()?;
    let planes = image.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let plane = w * h;
    let mut rgb = vec![0u8; 3 * plane];
    for i in 0..plane {
        for c in 0..3 {
            let v = planes[c * plane + i] + MEAN_BGR[c] as f32;
            rgb[3 * i + (2 - c)] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    Ok((rgb, w, h))
}

/// Resamples an image `[1, C, H, W]` to `[1, C, h, w]` bilinearly (pixel
/// centres aligned, edges clamped), in whatever space it is in. Used to
/// carry a coarse render to the next scale without rounding to bytes.
pub fn resize(image: &Tensor, w: usize, h: usize) -> Result<Tensor> {
    let (_, c, src_h, src_w) = image.dims4()?;
    if w == 0 || h == 0 {
        return Err(EngineError::Image(format!("cannot resize to {w}x{h}")));
    }
    let src = image.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    // For each output coordinate: the two source indices and the weight of the second.
    let taps = |n_out: usize, n_src: usize| -> Vec<(usize, usize, f32)> {
        (0..n_out)
            .map(|o| {
                let x = ((o as f64 + 0.5) * n_src as f64 / n_out as f64 - 0.5).clamp(0.0, (n_src - 1) as f64);
                let i0 = x.floor() as usize;
                let i1 = (i0 + 1).min(n_src - 1);
                (i0, i1, (x - i0 as f64) as f32)
            })
            .collect()
    };
    let (xs, ys) = (taps(w, src_w), taps(h, src_h));
    let mut out = Vec::with_capacity(c * h * w);
    for ch in 0..c {
        let plane = &src[ch * src_h * src_w..(ch + 1) * src_h * src_w];
        for &(y0, y1, fy) in &ys {
            for &(x0, x1, fx) in &xs {
                let top = plane[y0 * src_w + x0] * (1.0 - fx) + plane[y0 * src_w + x1] * fx;
                let bottom = plane[y1 * src_w + x0] * (1.0 - fx) + plane[y1 * src_w + x1] * fx;
                out.push(top * (1.0 - fy) + bottom * fy);
            }
        }
    }
    Ok(Tensor::from_vec(out, (1, c, h, w), image.device())?.to_dtype(image.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_constants_and_interpolates_linearly() {
        let flat = Tensor::full(7.5f32, (1, 3, 4, 6), &Device::Cpu).unwrap();
        let v = resize(&flat, 11, 9).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| (x - 7.5).abs() < 1e-6));
        // A horizontal ramp 0, 1 doubled in width: centres at 0.25 and 0.75 of a pixel.
        let ramp = Tensor::new(&[[[[0f32, 1.0]]]], &Device::Cpu).unwrap();
        let v = resize(&ramp, 4, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v, vec![0.0, 0.25, 0.75, 1.0]);
        assert_eq!(resize(&ramp, 1, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0.5]);
    }

    #[test]
    fn round_trip_and_channel_order() {
        let rgb = vec![255u8, 0, 10, 1, 2, 3];
        let t = to_tensor(&rgb, 2, 1, DType::F32, &Device::Cpu).unwrap();
        // First pixel's B plane value: 10 − 103.939.
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((v[0] - (10.0 - 103.939)).abs() < 1e-4);
        assert!((v[4] - (255.0 - 123.68)).abs() < 1e-4);
        assert_eq!(to_rgb(&t).unwrap(), (rgb, 2, 1));
    }

    #[test]
    fn wrong_length_is_refused() {
        assert!(to_tensor(&[0u8; 5], 2, 1, DType::F32, &Device::Cpu).is_err());
        assert!(to_tensor(&[], 0, 0, DType::F32, &Device::Cpu).is_err());
    }
}
