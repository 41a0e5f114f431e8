//! RGB bytes ↔ the optimisation space: BGR, 0..255, minus the ImageNet mean
//! (the convention of the original Caffe VGG weights).

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};

/// Mean pixel of the VGG training set, in B, G, R order.
pub const MEAN_BGR: [f64; 3] = [103.939, 116.779, 123.68];

/// The pixel range in the optimisation space: each plane's 0..255 minus
/// its mean. Every optimizer keeps its image inside it, so the image a
/// render writes (a PNG holds 0..255 and nothing else) is the image whose
/// loss it logged, to rounding.
#[derive(Debug, Clone)]
pub struct PixelBox {
    /// `[1, 3, 1, 1]`: the lowest value of each plane …
    lo: Tensor,
    /// … and the highest.
    hi: Tensor,
}

impl PixelBox {
    /// The box for images like `like` (`[1, 3, H, W]`, its dtype and device).
    pub fn new(like: &Tensor) -> Result<Self> {
        let plane = |f: fn(f64) -> f64| -> Result<Tensor> {
            let v: Vec<f32> = MEAN_BGR.iter().map(|&m| f(m) as f32).collect();
            Ok(Tensor::from_vec(v, (1, 3, 1, 1), like.device())?.to_dtype(like.dtype())?)
        };
        Ok(Self { lo: plane(|m| -m)?, hi: plane(|m| 255.0 - m)? })
    }
}

impl crate::lbfgs::Bounds for PixelBox {
    fn project(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.broadcast_maximum(&self.lo)?.broadcast_minimum(&self.hi)?)
    }

    fn free(&self, x: &Tensor, g: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let at_lo = x.broadcast_le(&self.lo)?.to_dtype(dtype)?;
        let at_hi = x.broadcast_ge(&self.hi)?.to_dtype(dtype)?;
        // A step along −g lowers x where g > 0 and raises it where g < 0.
        let lowers = g.gt(0.0)?.to_dtype(dtype)?;
        let raises = g.lt(0.0)?.to_dtype(dtype)?;
        let blocked = ((at_lo * lowers)? + (at_hi * raises)?)?;
        Ok(blocked.affine(-1.0, 1.0)?)
    }
}

/// `rgb`: `h·w·3` bytes, row-major. Returns `[1, 3, h, w]` (B, G, R planes).
pub fn to_tensor(rgb: &[u8], w: usize, h: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    planes(rgb, 1.0, w, h, dtype, device)
}

/// RGB samples (`h·w·3`, row-major), each `units` to a 0..255 step, as
/// B, G, R planes minus the mean.
fn planes<T: Copy + Into<f32>>(rgb: &[T], units: f32, w: usize, h: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    if w == 0 || h == 0 || rgb.len() != w * h * 3 {
        return Err(EngineError::Image(format!("{} values do not make a {w}x{h} RGB image", rgb.len())));
    }
    let plane = w * h;
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            // plane c holds B, G, R for c = 0, 1, 2.
            data[c * plane + i] = px[2 - c].into() / units - MEAN_BGR[c] as f32;
        }
    }
    Ok(Tensor::from_vec(data, (1, 3, h, w), device)?.to_dtype(dtype)?)
}

/// The inverse of [`to_tensor`], rounded and clamped to 0..255.
/// Returns `(rgb, w, h)`.
pub fn to_rgb(image: &Tensor) -> Result<(Vec<u8>, usize, usize)> {
    samples(image, |v| v.round().clamp(0.0, 255.0) as u8)
}

/// The inverse of [`to_tensor`] at 16 bits a channel: each value `v`
/// (0..255) as `round(257·v)`, clamped to 0..65535, so an 8-bit value `b`
/// is exactly `257·b` and what lies between two 8-bit values is kept.
/// Returns `(rgb, w, h)`.
pub fn to_rgb16(image: &Tensor) -> Result<(Vec<u16>, usize, usize)> {
    samples(image, |v| (v * 257.0).round().clamp(0.0, 65535.0) as u16)
}

/// An image's values on the 0..255 scale, row-major RGB, each through
/// `quantise`.
fn samples<T: Copy + Default>(image: &Tensor, quantise: impl Fn(f32) -> T) -> Result<(Vec<T>, usize, usize)> {
    let (_, _, h, w) = image.dims4()?;
    let planes = image.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let plane = w * h;
    let mut rgb = vec![T::default(); 3 * plane];
    for i in 0..plane {
        for c in 0..3 {
            rgb[3 * i + (2 - c)] = quantise(planes[c * plane + i] + MEAN_BGR[c] as f32);
        }
    }
    Ok((rgb, w, h))
}

/// [`to_tensor`] from 16-bit channels (`v / 257` on the 0..255 scale).
pub fn to_tensor16(rgb: &[u16], w: usize, h: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    planes(rgb, 257.0, w, h, dtype, device)
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

/// The pictures of one stage, in the optimisation space, all `[1, 3, H, W]`
/// at that stage's size.
#[derive(Debug, Clone)]
pub struct Pictures {
    pub content: Tensor,
    pub styles: Vec<Tensor>,
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bits_keep_what_eight_round_away() {
        // Values between the 8-bit steps, and out of range at both ends.
        let values: Vec<f32> = (0..3 * 40).map(|i| -3.0 + i as f32 * 2.2 - MEAN_BGR[i % 3] as f32).collect();
        let image = Tensor::from_vec(values, (1, 3, 5, 8), &Device::Cpu).unwrap();
        let (rgb16, w, h) = to_rgb16(&image).unwrap();
        let back16 = to_tensor16(&rgb16, w, h, DType::F32, &Device::Cpu).unwrap();
        let (rgb8, _, _) = to_rgb(&image).unwrap();
        let back8 = to_tensor(&rgb8, w, h, DType::F32, &Device::Cpu).unwrap();
        // In range, 16 bits are within half a 16-bit step; 8 bits within half an 8-bit one.
        let clamp = |t: &Tensor| {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v.iter().enumerate().map(|(i, x)| (x + MEAN_BGR[i / 40] as f32).clamp(0.0, 255.0)).collect::<Vec<_>>()
        };
        let (want, got16, got8) = (clamp(&image), clamp(&back16), clamp(&back8));
        let err = |got: &[f32]| want.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err(&got16) <= 0.5 / 257.0 + 1e-4, "{}", err(&got16));
        assert!(err(&got8) > 0.1 && err(&got8) <= 0.5 + 1e-4, "{}", err(&got8));
        // An 8-bit value is exactly 257 times itself.
        assert!(rgb8.iter().zip(&rgb16).all(|(&b, &s)| (s as i32 - 257 * b as i32).abs() <= 128));
        let exact = Tensor::from_vec(vec![200.0 - MEAN_BGR[0] as f32, 0.0 - MEAN_BGR[1] as f32, 255.0 - MEAN_BGR[2] as f32], (1, 3, 1, 1), &Device::Cpu).unwrap();
        assert_eq!(to_rgb16(&exact).unwrap().0, vec![65535, 0, 200 * 257]);
    }

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
