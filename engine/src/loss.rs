//! The losses of a render, each a small unit ([`Term`]: a statistic summed
//! over positions, the value from it, the gradient at each position), and
//! the list of weighted terms a render sums (crowsonkb's `SumLoss`, as
//! data): adding a loss means writing one [`Term`] and pushing it onto that
//! list, and it works untiled and tiled alike ([`crate::tiled`] sums its
//! statistic over the tiles).
//!
//! Values are returned as `f64` whatever the tensors' dtype.

use candle_core::{DType, Device, Tensor, WithDType};
use rayon::prelude::*;

use crate::error::Result;
use crate::layers::{on_cpu, with_cpu_slice};

pub use crate::losses::{LossRecord, Losses, Part};

/// What a term reads: a conv layer's output (channels-last `[1, H, W, C]`)
/// or the image itself (`[1, 3, H, W]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// Index of the conv in [`crate::arch::VGG19`].
    Layer(usize),
    Image,
}

/// Where a block of positions sits in the whole map a term reads: its
/// first row and column, and the whole map's rows and columns. (The
/// block's own size is its tensor's.) Untiled, the block is the whole map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub top: usize,
    pub left: usize,
    /// The whole map's `(rows, columns)`.
    pub whole: (usize, usize),
}

impl Window {
    /// The whole of an `h`×`w` map.
    pub fn whole(h: usize, w: usize) -> Self {
        Self { top: 0, left: 0, whole: (h, w) }
    }
}

/// A loss, in three steps so that the one definition serves the whole
/// image and the tiled path ([`crate::tiled`]) alike:
///
/// ```text
/// statistic(block)  a sum over the block's positions (f64): blocks that
///                   cover the map add up to the whole map's statistic
/// value(Σ stats)    the term's value, and its `adjoint` — k·∂value/∂statistic,
///                   what each position's gradient needs from the whole
/// grad(block, adj)  k·∂value/∂block, at the block's own positions
/// ```
///
/// Untiled, the block is the whole map. Gatys' terms fit: content sums
/// `(F − P)²`, style sums `FᵀF` (its Gram matrix). A term that reads the
/// image ([`Reads::Image`]) is always given the whole image (it is in
/// memory anyway), so its statistic need not add over blocks (total
/// variation's does not: neighbours cross tile borders).
pub trait Term: Send + Sync {
    /// The block's statistic, `f64`.
    fn statistic(&self, block: &Tensor, at: Window) -> Result<Tensor>;

    /// `(value, adjoint)` from the whole map's statistic; `k` is the
    /// caller's weight, folded into the adjoint (so into every gradient).
    fn value(&self, statistic: &Tensor, whole: (usize, usize), k: f64) -> Result<(f64, Tensor)>;

    /// `k·∂value/∂block` (the block's dtype and shape).
    fn grad(&self, block: &Tensor, at: Window, adjoint: &Tensor) -> Result<Tensor>;

    /// The value at a whole feature map `x` and `k·∂value/∂x`.
    fn value_and_scaled_grad(&self, x: &Tensor, k: f64) -> Result<(f64, Tensor)> {
        let at = whole_window(x, Reads::Layer(0))?;
        let (value, adjoint) = self.value(&self.statistic(x, at)?, at.whole, k)?;
        Ok((value, self.grad(x, at, &adjoint)?))
    }
}

/// The window of a whole map: a feature map `[1, H, W, C]`'s or an image
/// `[1, C, H, W]`'s `(H, W)`.
pub fn whole_window(x: &Tensor, reads: Reads) -> Result<Window> {
    Ok(match reads {
        Reads::Layer(_) => Window::whole(x.dim(1)?, x.dim(2)?),
        Reads::Image => Window::whole(x.dim(2)?, x.dim(3)?),
    })
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

impl Weighted {
    /// The `k` its term's gradient is scaled by: the part's weight × its own.
    pub fn k(&self, weights: PartWeights) -> f64 {
        weights.of(self.part) * self.weight
    }
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

/// Each term's value and adjoint from its whole statistic, summed into
/// [`Losses`] (each term's value times its own weight in its part's
/// column; the total weighs the parts). `wholes[i]`: term i's whole map.
pub fn sum_terms(terms: &[Weighted], weights: PartWeights, statistics: &[Tensor], wholes: &[(usize, usize)]) -> Result<(Losses, Vec<Tensor>)> {
    let mut losses = Losses::default();
    let mut adjoints = Vec::with_capacity(terms.len());
    for ((t, statistic), &whole) in terms.iter().zip(statistics).zip(wholes) {
        let (value, adjoint) = t.term.value(statistic, whole, t.k(weights))?;
        losses.add(t.part, t.weight * value);
        adjoints.push(adjoint);
    }
    losses.total = weights.content * losses.content + weights.style * losses.style + weights.tv * losses.tv;
    Ok((losses, adjoints))
}

/// The losses of a list of terms over whole maps and, if `with_grad`,
/// each term's scaled gradient with where it goes: `(reads, k·∂term/∂x)`,
/// in list order (so gradients that meet at one layer are always added in
/// the same order).
pub fn evaluate_terms<'a>(
    terms: &[Weighted],
    weights: PartWeights,
    read: impl Fn(Reads) -> &'a Tensor,
    with_grad: bool,
) -> Result<(Losses, Vec<(Reads, Tensor)>)> {
    let windows = terms.iter().map(|t| whole_window(read(t.reads), t.reads)).collect::<Result<Vec<_>>>()?;
    let statistics = terms.iter().zip(&windows).map(|(t, &at)| t.term.statistic(read(t.reads), at)).collect::<Result<Vec<_>>>()?;
    let wholes: Vec<_> = windows.iter().map(|w| w.whole).collect();
    let (losses, adjoints) = sum_terms(terms, weights, &statistics, &wholes)?;
    let mut grads = Vec::with_capacity(if with_grad { terms.len() } else { 0 });
    if with_grad {
        for ((t, &at), adjoint) in terms.iter().zip(&windows).zip(&adjoints) {
            grads.push((t.reads, t.term.grad(read(t.reads), at, adjoint)?));
        }
    }
    Ok((losses, grads))
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// A number as the one-element `f64` tensor a statistic or adjoint is.
fn number(v: f64) -> Result<Tensor> {
    Ok(Tensor::new(v, &Device::Cpu)?)
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

/// [`gram`] in `f64`: the form every Gram statistic and target is summed in.
pub fn gram_f64(features: &Tensor) -> Result<Tensor> {
    Ok(gram(features)?.to_dtype(DType::F64)?)
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
    /// `P`: the content image's features, `[1, H, W, C]`, the whole map.
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

    /// `F − P` at the block's positions.
    fn diff(&self, block: &Tensor, at: Window) -> Result<Tensor> {
        let (_, h, w, _) = block.dims4()?;
        Ok((block - self.target.narrow(1, at.top, h)?.narrow(2, at.left, w)?)?)
    }
}

impl Term for ContentLoss {
    /// `Σ (F − P)²` over the block.
    fn statistic(&self, block: &Tensor, at: Window) -> Result<Tensor> {
        Ok(self.diff(block, at)?.sqr()?.sum_all()?.to_dtype(DType::F64)?)
    }

    /// `L_c`, and the adjoint `k / (2·s)`.
    fn value(&self, statistic: &Tensor, _whole: (usize, usize), k: f64) -> Result<(f64, Tensor)> {
        let s = self.target.elem_count() as f64;
        Ok((scalar(statistic)? / (4.0 * s), number(k / (2.0 * s))?))
    }

    /// `k·(F − P) / (2·s)`.
    fn grad(&self, block: &Tensor, at: Window, adjoint: &Tensor) -> Result<Tensor> {
        Ok(self.diff(block, at)?.affine(scalar(adjoint)?, 0.0)?)
    }
}

/// Style loss at one layer: `E = Σ (G − A)² / (4·N²·M²)` with `G` the Gram
/// matrix of the generated image's features and `A` the style's.
#[derive(Debug, Clone)]
pub struct StyleLoss {
    /// `A`: the target Gram matrix, `[N, N]`, `f64` like the sums of the
    /// tiles' Gram matrices (summing many partial Gram matrices in f32
    /// loses more than one whole one does).
    target: Tensor,
}

impl StyleLoss {
    /// From the target Gram matrix (a style image's, or a blend's).
    pub fn new(target: Tensor) -> Result<Self> {
        Ok(Self { target: target.to_dtype(DType::F64)? })
    }

    /// From the style image's features at this layer.
    pub fn from_features(style_features: &Tensor) -> Result<Self> {
        Self::new(gram(style_features)?)
    }

    /// A blend of several styles: `A = Σ_k b_k·A_k` with `Σ b_k = 1`.
    /// (`Σ_k b_k·Σ(G − A_k)²` equals `Σ(G − A)²` plus a constant, so this
    /// has the same gradient as the sum of the per-style losses.)
    pub fn blended(style_features: &[Tensor], blend: &[f64]) -> Result<Self> {
        let grams = style_features.iter().map(gram).collect::<Result<Vec<_>>>()?;
        Self::new(blend_grams(&grams, blend)?)
    }

    /// `(E, ∂E/∂F)`; the gradient is `(G − A)·F / (N²·M²)`, computed as
    /// `Fᵀ·(G − A)` (G − A is symmetric) in the feature map's layout.
    pub fn value_and_grad(&self, features: &Tensor) -> Result<(f64, Tensor)> {
        self.value_and_scaled_grad(features, 1.0)
    }
}

/// `Σ_k b_k·A_k`, in `f64`.
pub fn blend_grams(grams: &[Tensor], blend: &[f64]) -> Result<Tensor> {
    let mut target: Option<Tensor> = None;
    for (g, &b) in grams.iter().zip(blend) {
        let a = g.to_dtype(DType::F64)?.affine(b, 0.0)?;
        target = Some(match target {
            Some(t) => (t + a)?,
            None => a,
        });
    }
    target.ok_or_else(|| crate::error::invalid("style", "no style image"))
}

impl Term for StyleLoss {
    /// The block's Gram matrix `FᵀF`.
    fn statistic(&self, block: &Tensor, _at: Window) -> Result<Tensor> {
        gram_f64(block)
    }

    /// `E`, and the adjoint `k·(G − A) / (N²·M²)` (M: the whole map's
    /// positions). The scale goes on the small `N×N` matrix, so each
    /// position's gradient is one product.
    fn value(&self, statistic: &Tensor, (h, w): (usize, usize), k: f64) -> Result<(f64, Tensor)> {
        let n = self.target.dim(0)? as f64;
        let m = (h * w) as f64;
        let n2m2 = n * n * m * m;
        let diff = (statistic - &self.target)?;
        let value = scalar(&diff.sqr()?.sum_all()?)? / (4.0 * n2m2);
        Ok((value, diff.affine(k / n2m2, 0.0)?))
    }

    /// `Fᵀ·adjoint`, back in the block's layout.
    fn grad(&self, block: &Tensor, _at: Window, adjoint: &Tensor) -> Result<Tensor> {
        let ft = positions_by_channels(block)?;
        Ok(ft.matmul(&adjoint.to_dtype(block.dtype())?)?.reshape(block.shape())?)
    }
}

/// Total variation as a [`Term`] reading the whole image (its statistic is
/// the value itself: neighbours' differences do not add over blocks).
pub struct TotalVariation;

impl Term for TotalVariation {
    fn statistic(&self, image: &Tensor, _at: Window) -> Result<Tensor> {
        number(total_variation(image)?.0)
    }

    fn value(&self, statistic: &Tensor, _whole: (usize, usize), k: f64) -> Result<(f64, Tensor)> {
        Ok((scalar(statistic)?, number(k)?))
    }

    fn grad(&self, image: &Tensor, _at: Window, adjoint: &Tensor) -> Result<Tensor> {
        Ok(total_variation(image)?.1.affine(scalar(adjoint)?, 0.0)?)
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
