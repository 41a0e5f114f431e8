//! The losses of a render, each a small unit that returns its value and its
//! gradient with respect to what it reads, and the list of weighted terms a
//! render sums (crowsonkb's `SumLoss`, as data): adding a loss means writing
//! one [`Term`] and pushing it onto that list.
//!
//! Values are returned as `f64` whatever the tensors' dtype.

use candle_core::{DType, Device, Tensor, WithDType};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::layers::{on_cpu, with_cpu_slice};

/// The losses of one image. `content`, `style` and `tv` are unweighted by
/// α, β and the TV weight (but include each layer's own weight);
/// `total = α·content + β·style + tv_weight·tv`, the number the optimizer
/// minimises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Losses {
    pub content: f64,
    pub style: f64,
    pub tv: f64,
    pub total: f64,
}

impl Losses {
    /// Which part made a non-finite total, and the parameter to lower
    /// (`before`: the last finite losses of the render, if any). A finite
    /// part whose weighted value is not: its weight (`alpha`, `beta`,
    /// `tv_weight`). A part that is itself not finite means the image left
    /// the range of numbers: the weight of a part that was already
    /// astronomical (over 1e100) the step before drove it there, else the
    /// step size (`lr`). A sum that overflows although every weighted part
    /// is finite: the largest part's weight.
    pub fn blame(&self, before: Option<&Losses>, alpha: f64, beta: f64, tv_weight: f64) -> (String, &'static str) {
        let parts = [("content", self.content, "α", alpha, "alpha"), ("style", self.style, "β", beta, "beta"), ("TV", self.tv, "the TV weight", tv_weight, "tv_weight")];
        if let Some((name, value, ..)) = parts.iter().find(|p| !p.1.is_finite()) {
            let earlier = before.map(|b| [b.content * alpha, b.style * beta, b.tv * tv_weight]);
            let huge = earlier.and_then(|w| (0..3).filter(|&i| w[i].abs() > 1e100).max_by(|&a, &b| w[a].abs().total_cmp(&w[b].abs())).map(|i| (i, w[i])));
            if let Some((i, weighted)) = huge {
                let (part, _, symbol, weight, lever) = parts[i];
                return (
                    format!("the {name} loss itself is {value}, after {part} × {symbol} reached {weighted:.3e} ({symbol} = {weight:e}) the step before"),
                    lever,
                );
            }
            return (format!("the {name} loss itself is {value} (the image left the range of numbers)"), "lr");
        }
        if let Some((name, value, symbol, weight, lever)) = parts.iter().find(|p| !(p.1 * p.3).is_finite()) {
            return (format!("{name} × {symbol} = {value:.3e} × {weight:e} overflows"), lever);
        }
        let (name, value, symbol, weight, lever) = parts.iter().max_by(|a, b| (a.1 * a.3).abs().total_cmp(&(b.1 * b.3).abs())).copied().unwrap_or(parts[0]);
        (format!("{name} × {symbol} = {:.3e} is too large to add up", value * weight), lever)
    }

    /// Adds a term's (layer-weighted) value to the part it belongs to.
    fn add(&mut self, part: Part, value: f64) {
        match part {
            Part::Content => self.content += value,
            Part::Style => self.style += value,
            Part::Tv => self.tv += value,
        }
    }
}

/// One line of the loss log, and of a checkpoint's history: the losses of
/// the image *before* iteration `iteration`'s update (the last line of a
/// finished render is the final image).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossRecord {
    pub iteration: usize,
    #[serde(flatten)]
    pub losses: Losses,
    /// Render time up to this evaluation, across resumes.
    pub seconds: f64,
}

/// Which column of [`Losses`] a term adds to, and so which global weight
/// (α, β, TV weight) multiplies it in the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Content,
    Style,
    Tv,
}

/// What a term reads: a conv layer's output (channels-last `[1, H, W, C]`)
/// or the image itself (`[1, 3, H, W]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// Index of the conv in [`crate::arch::VGG19`].
    Layer(usize),
    Image,
}

/// A loss: its value at `x` and its gradient with respect to `x`, scaled by
/// `k` (the caller's weight, folded into the one pass that scales the
/// gradient anyway).
pub trait Term: Send + Sync {
    fn value_and_scaled_grad(&self, x: &Tensor, k: f64) -> Result<(f64, Tensor)>;
}

/// A term in a render's total: `part`'s global weight × `weight` × the
/// term's value.
pub struct Weighted {
    pub part: Part,
    pub reads: Reads,
    /// The layer's own weight (`conv4_1:3.0` → 3.0; 1 for TV).
    pub weight: f64,
    pub term: Box<dyn Term>,
}

/// The global weight of each part: `(α, β, tv_weight)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartWeights {
    pub content: f64,
    pub style: f64,
    pub tv: f64,
}

impl PartWeights {
    fn of(&self, part: Part) -> f64 {
        match part {
            Part::Content => self.content,
            Part::Style => self.style,
            Part::Tv => self.tv,
        }
    }
}

/// The losses of a list of terms and, if `with_grad`, each term's scaled
/// gradient with where it goes: `(reads, k·∂term/∂x)`, in list order (so
/// gradients that meet at one layer are always added in the same order).
pub fn evaluate_terms<'a>(
    terms: &[Weighted],
    weights: PartWeights,
    read: impl Fn(Reads) -> &'a Tensor,
    with_grad: bool,
) -> Result<(Losses, Vec<(Reads, Tensor)>)> {
    let mut losses = Losses::default();
    let mut grads = Vec::with_capacity(if with_grad { terms.len() } else { 0 });
    for t in terms {
        let (value, grad) = t.term.value_and_scaled_grad(read(t.reads), weights.of(t.part) * t.weight)?;
        losses.add(t.part, t.weight * value);
        if with_grad {
            grads.push((t.reads, grad));
        }
    }
    losses.total = weights.content * losses.content + weights.style * losses.style + weights.tv * losses.tv;
    Ok((losses, grads))
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// A channels-last feature map `[1, H, W, N]` as the matrix `Fᵀ`: `[M, N]`,
/// `M = H·W` positions by `N` channels.
fn positions_by_channels(features: &Tensor) -> Result<Tensor> {
    let (_, h, w, n) = features.dims4()?;
    Ok(features.reshape((h * w, n))?)
}

/// Gram matrix of a feature map: `[1, H, W, N]` → `[N, N]`, `G = F·Fᵀ` with
/// `F` the map as `[N, M]`, `M = H·W`. Not normalised.
pub fn gram(features: &Tensor) -> Result<Tensor> {
    gram_of(&positions_by_channels(features)?)
}

/// Positions summed per block by one GEMM in [`gram_cpu`].
const GRAM_BLOCK: usize = 2048;

/// `FᵀF` for `Fᵀ`: `[M, N]`.
fn gram_of(ft: &Tensor) -> Result<Tensor> {
    match ft.dtype() {
        DType::F32 if on_cpu(ft) => gram_cpu::<f32>(ft),
        DType::F64 if on_cpu(ft) => gram_cpu::<f64>(ft),
        _ => Ok(ft.t()?.matmul(ft)?),
    }
}

/// `FᵀF` on the CPU, split over blocks of positions. A plain matmul
/// parallelises over the N×N output only, which for conv1_1 (64×64, M in
/// the hundreds of thousands) leaves one core doing all the work. The
/// blocks are fixed by M alone and their partial sums added in order, so
/// the result does not depend on the thread count.
fn gram_cpu<T: WithDType>(ft: &Tensor) -> Result<Tensor> {
    let (_, n) = ft.dims2()?;
    let zero = T::from_f64(0.0);
    let partials: Vec<Vec<T>> = with_cpu_slice::<T, _>(ft, |f| {
        f.par_chunks(GRAM_BLOCK * n)
            .map(|block| {
                let rows = block.len() / n;
                let mut g = vec![zero; n * n];
                // SAFETY: g is n×n row-major; the lhs reads `block` as the
                // n×rows matrix Fᵀ (element (i, k) at k·n + i) and the rhs as
                // rows×n, both inside `block`.
                unsafe {
                    gemm::gemm(
                        n,
                        n,
                        rows,
                        g.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        block.as_ptr(),
                        n as isize,
                        1,
                        block.as_ptr(),
                        1,
                        n as isize,
                        zero,
                        T::from_f64(1.0),
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                g
            })
            .collect()
    })?;
    let mut total = vec![zero; n * n];
    for g in &partials {
        total.iter_mut().zip(g).for_each(|(t, &v)| *t += v);
    }
    Ok(Tensor::from_vec(total, (n, n), &Device::Cpu)?)
}

/// Content loss at one layer: `L_c = Σ (F − P)² / (4·s)`, `s` = number of
/// elements of `P` (the assignment's variant of Gatys' ½·Σ).
#[derive(Debug, Clone)]
pub struct ContentLoss {
    /// `P`: the content image's features, `[1, H, W, C]`.
    target: Tensor,
}

impl ContentLoss {
    pub fn new(target: Tensor) -> Self {
        Self { target }
    }

    /// `(L_c, ∂L_c/∂F)`; the gradient is `(F − P) / (2·s)`.
    pub fn value_and_grad(&self, features: &Tensor) -> Result<(f64, Tensor)> {
        self.value_and_scaled_grad(features, 1.0)
    }
}

impl Term for ContentLoss {
    /// `(L_c, k·∂L_c/∂F)`.
    fn value_and_scaled_grad(&self, features: &Tensor, k: f64) -> Result<(f64, Tensor)> {
        let s = self.target.elem_count() as f64;
        let diff = (features - &self.target)?;
        let value = scalar(&diff.sqr()?.sum_all()?)? / (4.0 * s);
        Ok((value, diff.affine(k / (2.0 * s), 0.0)?))
    }
}

/// Style loss at one layer: `E = Σ (G − A)² / (4·N²·M²)` with `G` the Gram
/// matrix of the generated image's features and `A` the style's.
#[derive(Debug, Clone)]
pub struct StyleLoss {
    /// `A`: the target Gram matrix, `[N, N]`.
    target: Tensor,
}

impl StyleLoss {
    /// From the style image's features at this layer.
    pub fn from_features(style_features: &Tensor) -> Result<Self> {
        Ok(Self { target: gram(style_features)? })
    }

    /// A blend of several styles: `A = Σ_k b_k·A_k` with `Σ b_k = 1`.
    /// (`Σ_k b_k·Σ(G − A_k)²` equals `Σ(G − A)²` plus a constant, so this
    /// has the same gradient as the sum of the per-style losses.)
    pub fn blended(style_features: &[Tensor], blend: &[f64]) -> Result<Self> {
        let mut target: Option<Tensor> = None;
        for (f, &b) in style_features.iter().zip(blend) {
            let a = gram(f)?.affine(b, 0.0)?;
            target = Some(match target {
                Some(t) => (t + a)?,
                None => a,
            });
        }
        let target = target.ok_or_else(|| crate::error::invalid("style", "no style image"))?;
        Ok(Self { target })
    }

    /// `(E, ∂E/∂F)`; the gradient is `(G − A)·F / (N²·M²)`, computed as
    /// `Fᵀ·(G − A)` (G − A is symmetric) in the feature map's layout.
    pub fn value_and_grad(&self, features: &Tensor) -> Result<(f64, Tensor)> {
        self.value_and_scaled_grad(features, 1.0)
    }
}

impl Term for StyleLoss {
    /// `(E, k·∂E/∂F)`. The scale goes on the small `N×N` matrix `G − A`
    /// before the product, so the `M×N` gradient is written once.
    fn value_and_scaled_grad(&self, features: &Tensor, k: f64) -> Result<(f64, Tensor)> {
        let (_, h, w, n) = features.dims4()?;
        let m = (h * w) as f64;
        let n2m2 = (n as f64).powi(2) * m * m;
        let ft = positions_by_channels(features)?;
        let diff = (gram_of(&ft)? - &self.target)?;
        let value = scalar(&diff.sqr()?.sum_all()?)? / (4.0 * n2m2);
        let grad = ft.matmul(&diff.affine(k / n2m2, 0.0)?)?.reshape(features.shape())?;
        Ok((value, grad))
    }
}

/// Total variation as a [`Term`] reading the image.
pub struct TotalVariation;

impl Term for TotalVariation {
    fn value_and_scaled_grad(&self, image: &Tensor, k: f64) -> Result<(f64, Tensor)> {
        let (value, grad) = total_variation(image)?;
        Ok((value, grad.affine(k, 0.0)?))
    }
}

/// Total variation of an image `[1, C, H, W]`: the mean squared difference
/// between horizontal neighbours plus that between vertical neighbours
/// (pixel units, so a weight around 1e-3…1e-1 is noticeable).
pub fn total_variation(image: &Tensor) -> Result<(f64, Tensor)> {
    let (_, _, h, w) = image.dims4()?;
    let mut value = 0.0;
    let mut grad = image.zeros_like()?;
    for (dim, len) in [(3usize, w), (2usize, h)] {
        if len < 2 {
            continue;
        }
        // d[i] = x[i+1] − x[i]; L = Σ d² / count; ∂L/∂x[i+1] += 2d/count, ∂L/∂x[i] −= 2d/count.
        let d = (image.narrow(dim, 1, len - 1)? - image.narrow(dim, 0, len - 1)?)?;
        let count = d.elem_count() as f64;
        value += scalar(&d.sqr()?.sum_all()?)? / count;
        let g = d.affine(2.0 / count, 0.0)?;
        grad = ((grad + g.pad_with_zeros(dim, 1, 0)?)? - g.pad_with_zeros(dim, 0, 1)?)?;
    }
    Ok((value, grad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_finite_total_names_its_term_and_the_parameter_to_lower() {
        let l = |content: f64, style: f64, tv: f64| Losses { content, style, tv, total: f64::INFINITY };
        // (losses, α, β, tv weight, words, lever)
        let cases = [
            (l(1.0, f64::NAN, 1.0), 1.0, 1.0, 1.0, "the style loss itself is NaN", "lr"),
            (l(f64::INFINITY, 1.0, 1.0), 1.0, 1.0, 1.0, "the content loss itself is inf", "lr"),
            (l(1.0, 3e10, 1.0), 1.0, 1e300, 1.0, "style × β = 3.000e10 × 1e300 overflows", "beta"),
            (l(1.0, 1.0, 1e10), 1.0, 1.0, 1e300, "TV × the TV weight", "tv_weight"),
            (l(1e308, 1e308, 1.0), 1.5, 1.0, 1.0, "content × α = 1.500e308", "alpha"),
        ];
        for (losses, alpha, beta, tv, words, lever) in cases {
            let (culprit, got) = losses.blame(None, alpha, beta, tv);
            assert!(culprit.contains(words), "{culprit} should say {words}");
            assert_eq!(got, lever, "{culprit}");
        }
        // A term that left the numbers after its weighted value was
        // astronomical the step before: that weight, not the step size.
        let before = Losses { content: 1.0, style: 2e-3, tv: 0.0, total: 2e297 };
        let (culprit, lever) = l(f64::NAN, f64::NAN, 0.0).blame(Some(&before), 1.0, 1e300, 0.0);
        assert_eq!(lever, "beta", "{culprit}");
        assert!(culprit.contains("after style × β reached 2.000e297"), "{culprit}");
        let calm = Losses { content: 1.0, style: 2.0, tv: 0.0, total: 3.0 };
        assert_eq!(l(f64::NAN, f64::NAN, 0.0).blame(Some(&calm), 1.0, 1.0, 0.0).1, "lr");
    }
    use candle_core::Device;

    /// A feature map written channel by channel (`v[c][h][w]`), stored
    /// channels-last as the network keeps it.
    fn map(v: &[f64], c: usize, h: usize, w: usize) -> Tensor {
        Tensor::from_vec(v.to_vec(), (1, c, h, w), &Device::Cpu).unwrap().permute((0, 2, 3, 1)).unwrap().contiguous().unwrap()
    }

    /// Back to channel-major order for comparing with hand-worked values.
    fn channel_major(t: &Tensor) -> Vec<f64> {
        t.permute((0, 3, 1, 2)).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
    }

    #[test]
    fn blocked_gram_matches_a_plain_matmul() {
        // More positions than one block, and a partial last block.
        let m = 2 * GRAM_BLOCK + 37;
        let ft = Tensor::randn(0f64, 1., (m, 5), &Device::Cpu).unwrap();
        let plain = ft.t().unwrap().matmul(&ft).unwrap();
        let blocked = gram_of(&ft).unwrap();
        let err = (plain - blocked).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
        assert!(err < 1e-9, "max difference {err}");
    }

    #[test]
    fn gram_by_hand() {
        // F = [[1, 2], [3, 4]] (2 channels, 1×2 pixels): G = [[5, 11], [11, 25]].
        let g = gram(&map(&[1., 2., 3., 4.], 2, 1, 2)).unwrap().to_vec2::<f64>().unwrap();
        assert_eq!(g, vec![vec![5., 11.], vec![11., 25.]]);
    }

    #[test]
    fn content_loss_by_hand() {
        // diff = [1, -2, 0, 3]: Σ = 14, s = 4 → 14/16.
        let p = map(&[0., 0., 0., 0.], 1, 2, 2);
        let f = map(&[1., -2., 0., 3.], 1, 2, 2);
        let (v, g) = ContentLoss::new(p).value_and_grad(&f).unwrap();
        assert_eq!(v, 14.0 / 16.0);
        assert_eq!(g.flatten_all().unwrap().to_vec1::<f64>().unwrap(), vec![1. / 8., -2. / 8., 0., 3. / 8.]);
    }

    #[test]
    fn style_loss_by_hand() {
        // Style F_s = [[1, 0], [0, 1]] → A = I. Generated F = [[1, 2], [3, 4]] → G = [[5,11],[11,25]].
        // G − A = [[4, 11], [11, 24]]: Σ² = 16 + 121 + 121 + 576 = 834; N = 2, M = 2 → 834 / (4·4·4) = 13.03125.
        let style = StyleLoss::from_features(&map(&[1., 0., 0., 1.], 2, 1, 2)).unwrap();
        let (v, g) = style.value_and_grad(&map(&[1., 2., 3., 4.], 2, 1, 2)).unwrap();
        assert_eq!(v, 834.0 / 64.0);
        // (G − A)·F / (N²M²) = [[4·1+11·3, 4·2+11·4], [11·1+24·3, 11·2+24·4]] / 16
        let expect = [37. / 16., 52. / 16., 83. / 16., 118. / 16.];
        assert_eq!(channel_major(&g), expect);
    }

    #[test]
    fn blended_style_target_is_the_weighted_gram() {
        let a = map(&[1., 0., 0., 1.], 2, 1, 2);
        let b = map(&[2., 0., 0., 0.], 2, 1, 2);
        let blended = StyleLoss::blended(&[a, b], &[0.75, 0.25]).unwrap();
        // A = 0.75·I + 0.25·[[4,0],[0,0]] = [[1.75, 0], [0, 0.75]]; generated F = 0 → E = (1.75² + 0.75²)/64
        let (v, _) = blended.value_and_grad(&map(&[0.; 4], 2, 1, 2)).unwrap();
        assert!((v - (1.75f64.powi(2) + 0.75f64.powi(2)) / 64.0).abs() < 1e-15);
    }

    #[test]
    fn total_variation_by_hand() {
        // x = [[0, 1], [3, 5]]: horizontal d = [1, 2] → mean 2.5; vertical d = [3, 4] → mean 12.5.
        let image = Tensor::from_vec(vec![0., 1., 3., 5.], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let (v, g) = total_variation(&image).unwrap();
        assert_eq!(v, 15.0);
        // ∂/∂x00 = −1 − 3 = −4, ∂/∂x01 = 1 − 4 = −3, ∂/∂x10 = −2 + 3 = 1, ∂/∂x11 = 2 + 4 = 6.
        assert_eq!(g.flatten_all().unwrap().to_vec1::<f64>().unwrap(), vec![-4., -3., 1., 6.]);
    }
}
