//! An image's colour statistics (the mean and covariance of its pixels)
//! and the linear colour transfer that gives one image another's, as in
//! Gatys et al. 2016, "Preserving Color in Neural Artistic Style
//! Transfer": `x' = A·(x − μ_from) + μ_to` with `A = Σ_to^½·Σ_from^−½`, so
//! `x'` has exactly the mean `μ_to` and covariance `Σ_to`.
//!
//! The fast preset starts from the content recoloured to the style's
//! statistics ([`crate::Init::Recolored`]): the lowest style layers (conv1_1
//! and conv2_1), whose Gram matrices are mostly colour correlations, start
//! near their targets, and the content's structure is all still there.
//!
//! The statistics are taken in whatever space the tensor is in; the
//! transfer is affine, so the result is the same in any affinely related
//! space (the optimisation space is BGR minus the VGG means).

use candle_core::{DType, Tensor};

use crate::error::{EngineError, Result};

type Mat3 = [[f64; 3]; 3];

/// The mean colour and the 3×3 colour covariance of an image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorStats {
    pub mean: [f64; 3],
    pub cov: Mat3,
}

impl ColorStats {
    /// Of an image `[1, 3, H, W]`.
    pub fn of(image: &Tensor) -> Result<Self> {
        let (_, c, h, w) = image.dims4()?;
        if c != 3 || h * w == 0 {
            return Err(EngineError::Image(format!("colour statistics need a [1, 3, H, W] image with pixels, not {:?}", image.dims())));
        }
        let v = image.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let n = h * w;
        let plane = |ch: usize| &v[ch * n..(ch + 1) * n];
        let mut mean = [0.0; 3];
        for (ch, m) in mean.iter_mut().enumerate() {
            *m = plane(ch).iter().sum::<f64>() / n as f64;
        }
        let mut cov = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in i..3 {
                let s: f64 = plane(i).iter().zip(plane(j)).map(|(a, b)| (a - mean[i]) * (b - mean[j])).sum();
                cov[i][j] = s / n as f64;
                cov[j][i] = cov[i][j];
            }
        }
        Ok(Self { mean, cov })
    }

    /// The statistics of a mixture: the pixels of several images pooled
    /// with `weights` (which sum to 1), as a blend of styles pools them.
    pub fn mixture(parts: &[ColorStats], weights: &[f64]) -> Self {
        let mut mean = [0.0; 3];
        for (p, &w) in parts.iter().zip(weights) {
            for (m, pm) in mean.iter_mut().zip(p.mean) {
                *m += w * pm;
            }
        }
        // E[xxᵀ] of the mixture, less the mixture's mean squared.
        let mut cov = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                let second: f64 = parts.iter().zip(weights).map(|(p, &w)| w * (p.cov[i][j] + p.mean[i] * p.mean[j])).sum();
                cov[i][j] = second - mean[i] * mean[j];
            }
        }
        Self { mean, cov }
    }
}

/// `image` (`[1, 3, H, W]`, with statistics `from`) recoloured to have the
/// statistics `to`.
pub fn transfer(image: &Tensor, from: &ColorStats, to: &ColorStats) -> Result<Tensor> {
    let a = matmul(&sym_pow(&to.cov, 0.5), &sym_pow(&from.cov, -0.5));
    let (_, _, h, w) = image.dims4()?;
    let n = h * w;
    let v = image.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let mut out = vec![0.0f64; 3 * n];
    for p in 0..n {
        let x = [v[p] - from.mean[0], v[n + p] - from.mean[1], v[2 * n + p] - from.mean[2]];
        for ch in 0..3 {
            out[ch * n + p] = a[ch][0] * x[0] + a[ch][1] * x[1] + a[ch][2] * x[2] + to.mean[ch];
        }
    }
    Ok(Tensor::from_vec(out, (1, 3, h, w), image.device())?.to_dtype(image.dtype())?)
}

fn matmul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut c = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            c[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    c
}

/// `m^p` for a symmetric positive semi-definite 3×3 matrix, by its
/// eigendecomposition. Eigenvalues are floored at a small fraction of the
/// largest (and at one grey level²) so a flat or grey image's missing
/// directions are not blown up by `p < 0`.
fn sym_pow(m: &Mat3, p: f64) -> Mat3 {
    let (values, vectors) = jacobi_eigen(m);
    let largest = values.iter().cloned().fold(0.0, f64::max);
    let floor = (1e-4 * largest).max(1.0);
    let mut out = [[0.0; 3]; 3];
    for k in 0..3 {
        let l = values[k].max(floor).powf(p);
        for i in 0..3 {
            for j in 0..3 {
                out[i][j] += l * vectors[i][k] * vectors[j][k];
            }
        }
    }
    out
}

/// Eigenvalues and eigenvectors (as columns) of a symmetric 3×3 matrix, by
/// cyclic Jacobi rotations (exact to rounding after a few sweeps at 3×3).
fn jacobi_eigen(m: &Mat3) -> ([f64; 3], Mat3) {
    let mut a = *m;
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _sweep in 0..50 {
        let off = a[0][1].abs() + a[0][2].abs() + a[1][2].abs();
        if off <= 1e-15 * (a[0][0].abs() + a[1][1].abs() + a[2][2].abs()) || off == 0.0 {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q] == 0.0 {
                continue;
            }
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
            // a ← Jᵀ·a·J for the rotation J in the (p, q) plane.
            for k in 0..3 {
                let (akp, akq) = (a[k][p], a[k][q]);
                a[k][p] = c * akp - s * akq;
                a[k][q] = s * akp + c * akq;
            }
            for k in 0..3 {
                let (apk, aqk) = (a[p][k], a[q][k]);
                a[p][k] = c * apk - s * aqk;
                a[q][k] = s * apk + c * aqk;
            }
            for row in v.iter_mut() {
                let (vp, vq) = (row[p], row[q]);
                row[p] = c * vp - s * vq;
                row[q] = s * vp + c * vq;
            }
        }
    }
    ([a[0][0], a[1][1], a[2][2]], v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    fn random_image(seed: u64, w: usize, h: usize, mix: Mat3, offset: [f64; 3]) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = w * h;
        let raw: Vec<[f64; 3]> = (0..n).map(|_| [rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0)]).collect();
        let mut v = vec![0f32; 3 * n];
        for (p, r) in raw.iter().enumerate() {
            for ch in 0..3 {
                v[ch * n + p] = (offset[ch] + (0..3).map(|k| mix[ch][k] * r[k]).sum::<f64>()) as f32;
            }
        }
        Tensor::from_vec(v, (1, 3, h, w), &Device::Cpu).unwrap()
    }

    #[test]
    fn the_transfer_gives_exactly_the_target_statistics() {
        let content = random_image(1, 40, 30, [[30.0, 5.0, 0.0], [2.0, 20.0, 1.0], [0.0, 3.0, 10.0]], [-20.0, 5.0, 40.0]);
        let style = random_image(2, 25, 35, [[5.0, 40.0, 3.0], [8.0, 8.0, 8.0], [1.0, 0.0, 60.0]], [10.0, -30.0, 0.0]);
        let (from, to) = (ColorStats::of(&content).unwrap(), ColorStats::of(&style).unwrap());
        let recoloured = transfer(&content, &from, &to).unwrap();
        assert_eq!(recoloured.dims(), content.dims());
        let got = ColorStats::of(&recoloured).unwrap();
        for i in 0..3 {
            assert!((got.mean[i] - to.mean[i]).abs() < 1e-3, "mean {i}: {} vs {}", got.mean[i], to.mean[i]);
            for j in 0..3 {
                let scale = to.cov[i][i].max(to.cov[j][j]);
                assert!((got.cov[i][j] - to.cov[i][j]).abs() < 1e-4 * scale, "cov {i}{j}: {} vs {}", got.cov[i][j], to.cov[i][j]);
            }
        }
    }

    #[test]
    fn a_mixture_pools_the_pixels_of_its_parts() {
        let a = random_image(3, 20, 10, [[10.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 1.0]], [0.0, 0.0, 0.0]);
        let b = random_image(4, 20, 10, [[1.0, 0.0, 0.0], [0.0, 5.0, 0.0], [3.0, 0.0, 9.0]], [50.0, -5.0, 2.0]);
        let both = Tensor::cat(&[&a, &b], 3).unwrap();
        let pooled = ColorStats::of(&both).unwrap();
        let mixed = ColorStats::mixture(&[ColorStats::of(&a).unwrap(), ColorStats::of(&b).unwrap()], &[0.5, 0.5]);
        for i in 0..3 {
            assert!((pooled.mean[i] - mixed.mean[i]).abs() < 1e-6);
            for j in 0..3 {
                assert!((pooled.cov[i][j] - mixed.cov[i][j]).abs() < 1e-6 * (1.0 + pooled.cov[i][j].abs()));
            }
        }
    }

    #[test]
    fn a_grey_image_is_recoloured_without_blowing_up() {
        // Every channel equal: the covariance has rank one.
        let grey = random_image(5, 16, 16, [[20.0, 0.0, 0.0], [20.0, 0.0, 0.0], [20.0, 0.0, 0.0]], [0.0, 0.0, 0.0]);
        let colour = random_image(6, 16, 16, [[30.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 5.0]], [9.0, 9.0, 9.0]);
        let out = transfer(&grey, &ColorStats::of(&grey).unwrap(), &ColorStats::of(&colour).unwrap()).unwrap();
        let max = out.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(max.is_finite() && max < 500.0, "largest value {max}");
    }
}
