//! 3×3 convolution (stride 1, padding 1) on the CPU by Winograd's minimal
//! filtering F(4×4, 3×3), channels-last (`[H, W, C]`, batch 1).
//!
//! Why: every VGG convolution is 3×3/stride 1, and F(4×4, 3×3) computes a
//! 4×4 output tile with 36 multiplies per (input, output) channel pair where
//! direct convolution needs 144 — a quarter of the arithmetic, most of it in
//! 36 independent GEMMs (Lavin & Gray 2015, "Fast Algorithms for
//! Convolutional Neural Networks"). Per output tile `Y`, input patch `d`
//! (6×6) and kernel `g` (3×3):
//!
//! ```text
//! U = G g Gᵀ   (once per kernel)     V = Bᵀ d B   (per tile, per channel)
//! M[ξ] = V[ξ] · U[ξ]   for each of the 36 points ξ: [tiles, C_in]·[C_in, C_out]
//! Y = Aᵀ M A (+ bias, ReLU)
//! ```
//!
//! Channels-last makes every transform an element-wise operation over a
//! channel vector, which the compiler vectorises. Tiles are processed in
//! chunks of whole tile rows so the scratch stays a few MiB whatever the image
//! size. Every reduction runs in a fixed order, so results are bit-identical
//! run to run (bit-exact resume depends on it).

use candle_core::WithDType;
use rayon::prelude::*;

/// Output tile side (m) and input patch side (m + 2).
const TILE: usize = 4;
const PATCH: usize = TILE + 2;
/// Number of Winograd points, and so of GEMMs per chunk.
const POINTS: usize = PATCH * PATCH;
/// Elements of scratch per chunk buffer (V or M): 2 Mi, 8 MiB in f32.
const SCRATCH_ELEMS: usize = 2 << 20;

/// `G`, 6×3: the kernel transform.
const G: [[f64; 3]; PATCH] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// A kernel in the Winograd domain: `U[ξ][c_in][c_out]`, with the point
/// `ξ = b·6 + a` for row `a` and column `b` of the 6×6 transform.
#[derive(Debug, Clone)]
pub(crate) struct Kernel<T> {
    u: Vec<T>,
    c_in: usize,
    c_out: usize,
}

impl<T: WithDType> Kernel<T> {
    /// From a 3×3 kernel in `[C_out, C_in, 3, 3]` order (as a correlation,
    /// the way CNN weights are stored). Computed in f64.
    pub(crate) fn new(weight: &[f64], c_out: usize, c_in: usize) -> Self {
        assert_eq!(weight.len(), c_out * c_in * 9, "kernel is [C_out, C_in, 3, 3]");
        let mut u = vec![T::from_f64(0.0); POINTS * c_in * c_out];
        // C_out innermost: the writes to each point's [C_in][C_out] matrix
        // run along a row.
        for ci in 0..c_in {
            for co in 0..c_out {
                let g = &weight[(co * c_in + ci) * 9..][..9];
                // gg = G·g (6×3), then U = gg·Gᵀ (6×6).
                let mut gg = [[0.0; 3]; PATCH];
                for (a, row) in gg.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|i| G[a][i] * g[i * 3 + j]).sum();
                    }
                }
                for a in 0..PATCH {
                    for b in 0..PATCH {
                        let v: f64 = (0..3).map(|j| gg[a][j] * G[b][j]).sum();
                        u[((b * PATCH + a) * c_in + ci) * c_out + co] = T::from_f64(v);
                    }
                }
            }
        }
        Self { u, c_in, c_out }
    }
}

/// What happens around the convolution, fused into its transforms.
pub(crate) struct Fused<'a, T> {
    /// Multiply the input by `mask > 0` element-wise first (the ReLU mask of
    /// a backward pass); same shape as the input.
    pub(crate) input_mask: Option<&'a [T]>,
    /// Added to each output channel.
    pub(crate) bias: Option<&'a [T]>,
    /// `max(0, ·)` on the output.
    pub(crate) relu: bool,
}

/// `y = relu?(conv3x3(x ⊙ [mask > 0]) + bias)` for `x`: `[h, w, C_in]`
/// channels-last; returns `[h, w, C_out]`.
pub(crate) fn conv3x3<T: WithDType>(x: &[T], h: usize, w: usize, kernel: &Kernel<T>, fused: &Fused<T>) -> Vec<T> {
    conv3x3_with(Simd::detect(), x, h, w, kernel, fused)
}

/// [`conv3x3`] with the transforms compiled for `simd`.
fn conv3x3_with<T: WithDType>(simd: Simd, x: &[T], h: usize, w: usize, kernel: &Kernel<T>, fused: &Fused<T>) -> Vec<T> {
    let (c_in, c_out) = (kernel.c_in, kernel.c_out);
    assert_eq!(x.len(), h * w * c_in, "input is [h, w, C_in]");
    if let Some(m) = fused.input_mask {
        assert_eq!(m.len(), x.len(), "mask has the input's shape");
    }
    if let Some(b) = fused.bias {
        assert_eq!(b.len(), c_out, "one bias per output channel");
    }
    let zero = T::from_f64(0.0);
    let mut y = vec![zero; h * w * c_out];
    if h == 0 || w == 0 {
        return y;
    }
    let (tile_rows, tile_cols) = (h.div_ceil(TILE), w.div_ceil(TILE));
    // Whole tile rows per chunk, as many as the scratch budget allows.
    let rows_per_chunk = (SCRATCH_ELEMS / (POINTS * c_in.max(c_out) * tile_cols)).clamp(1, tile_rows);
    let mut v = vec![zero; rows_per_chunk * tile_cols * POINTS * c_in];
    let mut m = vec![zero; rows_per_chunk * tile_cols * POINTS * c_out];
    for (chunk, y_chunk) in y.chunks_mut(rows_per_chunk * TILE * w * c_out).enumerate() {
        let first_row = chunk * rows_per_chunk;
        let rows = rows_per_chunk.min(tile_rows - first_row);
        let tiles = rows * tile_cols;
        let v = &mut v[..tiles * POINTS * c_in];
        let m = &mut m[..tiles * POINTS * c_out];
        input_transform(simd, x, h, w, c_in, fused.input_mask, first_row, tile_cols, v);
        multiply(v, kernel, tiles, m);
        output_transform(simd, m, w, c_out, tile_cols, fused, y_chunk, (h - first_row * TILE).min(rows * TILE));
    }
    y
}

/// `V[t][ξ][c] = (Bᵀ d B)[ξ]` for each tile `t` of the chunk starting at
/// tile row `first_row`; `d` is the 6×6 patch around the tile, zero outside
/// the image.
#[allow(clippy::too_many_arguments)]
fn input_transform<T: WithDType>(
    simd: Simd,
    x: &[T],
    h: usize,
    w: usize,
    c: usize,
    mask: Option<&[T]>,
    first_row: usize,
    tile_cols: usize,
    v: &mut [T],
) {
    let zero = T::from_f64(0.0);
    v.par_chunks_mut(POINTS * c).enumerate().with_min_len(8).for_each_init(
        || vec![zero; 2 * POINTS * c],
        |scratch, (t, vt)| {
            let tile = InputTile { x, h, w, c, mask, ti: first_row + t / tile_cols, tj: t % tile_cols };
            simd.input_tile(&tile, scratch, vt);
        },
    );
}

/// One tile's input transform, with what it reads.
struct InputTile<'a, T> {
    x: &'a [T],
    h: usize,
    w: usize,
    c: usize,
    mask: Option<&'a [T]>,
    ti: usize,
    tj: usize,
}

impl<T: WithDType> InputTile<'_, T> {
    /// Writes `V[ξ][c]` of this tile to `vt`; `scratch`: 72 channel vectors.
    #[inline(always)]
    fn transform(&self, scratch: &mut [T], vt: &mut [T]) {
        let c = self.c;
        let (patch, rows) = scratch.split_at_mut(POINTS * c);
        gather_patch(self.x, self.h, self.w, c, self.mask, self.ti, self.tj, patch);
        // rows[i][b] = Σ_j d[i][j]·B[j][b]: Bᵀ along each patch row.
        for (d, r) in patch.chunks_exact(PATCH * c).zip(rows.chunks_exact_mut(PATCH * c)) {
            bt6(split6(d, 0, c, c), r, c);
        }
        // V[b·6 + a] = Σ_i Bᵀ[a][i]·rows[i][b]: Bᵀ down each column.
        for (b, vb) in vt.chunks_exact_mut(PATCH * c).enumerate() {
            bt6(split6(rows, b * c, PATCH * c, c), vb, c);
        }
    }
}

/// The widest vector instructions of this CPU. The crate is compiled for
/// baseline x86-64 (SSE2) so its binaries run anywhere; the transforms are
/// compiled again with AVX2 and AVX-512 enabled and picked at run time.
#[derive(Debug, Clone, Copy)]
enum Simd {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Simd {
    /// Every level this CPU can run, narrowest first (for tests).
    #[cfg(test)]
    fn available() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut levels = vec![Simd::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                levels.push(Simd::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                levels.push(Simd::Avx512);
            }
        }
        levels
    }

    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Simd::Avx2;
            }
        }
        Simd::Baseline
    }

    /// [`InputTile::transform`], compiled for these instructions.
    #[inline(always)]
    fn input_tile<T: WithDType>(self, tile: &InputTile<T>, scratch: &mut [T], vt: &mut [T]) {
        match self {
            Simd::Baseline => tile.transform(scratch, vt),
            // SAFETY: `detect` found these features on this CPU.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { input_tile_avx2(tile, scratch, vt) },
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { input_tile_avx512(tile, scratch, vt) },
        }
    }

    /// [`OutputTileRow::transform`], compiled for these instructions.
    #[inline(always)]
    fn output_tile_row<T: WithDType>(self, row: &OutputTileRow<T>, y_rows: &mut [T], scratch: &mut [T]) {
        match self {
            Simd::Baseline => row.transform(y_rows, scratch),
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { output_tile_row_avx2(row, y_rows, scratch) },
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { output_tile_row_avx512(row, y_rows, scratch) },
        }
    }
}

// The same transforms compiled with wider vectors (their bodies are
// `#[inline(always)]`, so they are generated again inside each of these).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_tile_avx2<T: WithDType>(tile: &InputTile<T>, scratch: &mut [T], vt: &mut [T]) {
    tile.transform(scratch, vt)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn input_tile_avx512<T: WithDType>(tile: &InputTile<T>, scratch: &mut [T], vt: &mut [T]) {
    tile.transform(scratch, vt)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_tile_row_avx2<T: WithDType>(row: &OutputTileRow<T>, y_rows: &mut [T], scratch: &mut [T]) {
    row.transform(y_rows, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn output_tile_row_avx512<T: WithDType>(row: &OutputTileRow<T>, y_rows: &mut [T], scratch: &mut [T]) {
    row.transform(y_rows, scratch)
}

/// Copies the 6×6 patch of tile `(ti, tj)` into `patch[i][j][c]`, zeros
/// where it leaves the image, multiplied by `mask > 0` if there is a mask.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gather_patch<T: WithDType>(
    x: &[T],
    h: usize,
    w: usize,
    c: usize,
    mask: Option<&[T]>,
    ti: usize,
    tj: usize,
    patch: &mut [T],
) {
    let zero = T::from_f64(0.0);
    patch.fill(zero);
    // Patch column j reads image column tj·4 − 1 + j.
    let x0 = (tj * TILE).saturating_sub(1);
    let x1 = (tj * TILE + TILE + 1).min(w);
    let j0 = x0 + 1 - tj * TILE;
    for (i, prow) in patch.chunks_exact_mut(PATCH * c).enumerate() {
        let Some(yy) = (ti * TILE + i).checked_sub(1) else { continue };
        if yy >= h {
            break;
        }
        let src = (yy * w + x0) * c..(yy * w + x1) * c;
        let dst = &mut prow[j0 * c..][..src.len()];
        match mask {
            None => dst.copy_from_slice(&x[src]),
            Some(mask) => {
                for ((d, &s), &k) in dst.iter_mut().zip(&x[src.clone()]).zip(&mask[src]) {
                    *d = if k > zero { s } else { zero };
                }
            }
        }
    }
}

/// Six channel vectors of length `len`, `stride` apart from `start`.
fn split6<T>(s: &[T], start: usize, stride: usize, len: usize) -> [&[T]; 6] {
    std::array::from_fn(|k| &s[start + k * stride..][..len])
}

/// `out[k] = Σ_j Bᵀ[k][j]·d[j]` for six channel vectors (`out`: 6 vectors
/// of length `c`, consecutive).
#[inline(always)]
fn bt6<T: WithDType>(d: [&[T]; 6], out: &mut [T], c: usize) {
    let (two, four, five) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(5.0));
    let (o0, rest) = out.split_at_mut(c);
    let (o1, rest) = rest.split_at_mut(c);
    let (o2, rest) = rest.split_at_mut(c);
    let (o3, rest) = rest.split_at_mut(c);
    let (o4, o5) = rest.split_at_mut(c);
    let o5 = &mut o5[..c];
    let [d0, d1, d2, d3, d4, d5] = d;
    for k in 0..c {
        let (a0, a1, a2, a3, a4, a5) = (d0[k], d1[k], d2[k], d3[k], d4[k], d5[k]);
        o0[k] = four * a0 - five * a2 + a4;
        o1[k] = a3 + a4 - four * (a1 + a2);
        o2[k] = four * (a1 - a2) + a4 - a3;
        o3[k] = two * (a3 - a1) + a4 - a2;
        o4[k] = two * (a1 - a3) + a4 - a2;
        o5[k] = four * a1 - five * a3 + a5;
    }
}

/// `out[k] = Σ_j Aᵀ[k][j]·s[j]` for `k < 4`.
#[inline(always)]
fn at6<T: WithDType>(s: [&[T]; 6], out: &mut [T], c: usize) {
    let (two, four, eight) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(8.0));
    let (o0, rest) = out.split_at_mut(c);
    let (o1, rest) = rest.split_at_mut(c);
    let (o2, o3) = rest.split_at_mut(c);
    let o3 = &mut o3[..c];
    let [s0, s1, s2, s3, s4, s5] = s;
    for k in 0..c {
        let (p, q) = (s1[k] + s2[k], s1[k] - s2[k]);
        let (r, t) = (s3[k] + s4[k], s3[k] - s4[k]);
        o0[k] = s0[k] + p + r;
        o1[k] = q + two * t;
        o2[k] = p + four * r;
        o3[k] = q + eight * t + s5[k];
    }
}

/// A raw pointer the 36 GEMMs share; each writes its own columns of `M`.
#[derive(Clone, Copy)]
struct SharedMut<T>(*mut T);
// SAFETY: the GEMMs for different points write disjoint column blocks of `M`
// (see `multiply`), and `M` outlives the parallel loop.
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer `offset` elements on (a method, so closures capture the
    /// whole `Send` wrapper rather than its raw field).
    ///
    /// # Safety
    /// `offset` must stay inside the allocation.
    unsafe fn add(self, offset: usize) -> *mut T {
        unsafe { self.0.add(offset) }
    }
}

/// `M[t][ξ][·] = V[t][ξ][·] · U[ξ]` for the 36 points, one single-threaded
/// GEMM each, the points spread over the thread pool.
fn multiply<T: WithDType>(v: &[T], kernel: &Kernel<T>, tiles: usize, m: &mut [T]) {
    let (c_in, c_out) = (kernel.c_in, kernel.c_out);
    assert!(v.len() >= tiles * POINTS * c_in && m.len() >= tiles * POINTS * c_out);
    let dst = SharedMut(m.as_mut_ptr());
    (0..POINTS).into_par_iter().for_each(|xi| {
        let lhs = &v[xi * c_in..];
        let rhs = &kernel.u[xi * c_in * c_out..][..c_in * c_out];
        // SAFETY: the three matrices lie inside `v`, `kernel.u` and `m`
        // (checked above: row t of V[ξ] starts at (t·36 + ξ)·C_in, of M[ξ] at
        // (t·36 + ξ)·C_out); different ξ write different columns of M.
        unsafe {
            gemm::gemm(
                tiles,
                c_out,
                c_in,
                dst.add(xi * c_out),
                1,
                (POINTS * c_out) as isize,
                false,
                lhs.as_ptr(),
                1,
                (POINTS * c_in) as isize,
                rhs.as_ptr(),
                1,
                c_out as isize,
                T::from_f64(0.0),
                T::from_f64(1.0),
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}

/// `Y = Aᵀ M A` for each tile of the chunk, plus bias and ReLU, written to
/// `y` (the chunk's output rows, `valid_rows` of them, channels-last).
#[allow(clippy::too_many_arguments)]
fn output_transform<T: WithDType>(
    simd: Simd,
    m: &[T],
    w: usize,
    c: usize,
    tile_cols: usize,
    fused: &Fused<T>,
    y: &mut [T],
    valid_rows: usize,
) {
    let zero = T::from_f64(0.0);
    let tile_row_len = tile_cols * POINTS * c;
    y.par_chunks_mut(TILE * w * c).zip(m.par_chunks(tile_row_len)).enumerate().for_each_init(
        || vec![zero; PATCH * TILE * c],
        |cols_t, (r, (y_rows, m_row))| {
            let rows = (valid_rows - r * TILE).min(TILE);
            simd.output_tile_row(&OutputTileRow { m_row, w, c, fused, rows }, y_rows, cols_t);
        },
    );
}

/// The output transform of one row of tiles, with what it reads.
struct OutputTileRow<'a, T> {
    /// `M[t][ξ][c]` of the row's tiles.
    m_row: &'a [T],
    w: usize,
    c: usize,
    fused: &'a Fused<'a, T>,
    /// Output rows inside the image (≤ 4).
    rows: usize,
}

impl<T: WithDType> OutputTileRow<'_, T> {
    /// Writes the row's output pixels to `y_rows`; `cols_t`: 24 channel vectors.
    #[inline(always)]
    fn transform(&self, y_rows: &mut [T], cols_t: &mut [T]) {
        let (w, c) = (self.w, self.c);
        for (tj, mt) in self.m_row.chunks_exact(POINTS * c).enumerate() {
            // cols_t[b][a'] = Σ_a Aᵀ[a'][a]·M[b·6 + a]: Aᵀ down each column.
            for (b, s) in cols_t.chunks_exact_mut(TILE * c).enumerate() {
                at6(split6(mt, b * PATCH * c, c, c), s, c);
            }
            // Y[a'][b'] = Σ_b Aᵀ[b'][b]·cols_t[b][a']: Aᵀ along each row, then
            // bias and ReLU, straight into the output.
            let cols = (w - tj * TILE).min(TILE);
            for a in 0..self.rows {
                let dst = &mut y_rows[(a * w + tj * TILE) * c..][..cols * c];
                at6_finish(split6(cols_t, a * c, TILE * c, c), dst, cols, self.fused, c);
            }
        }
    }
}

/// [`at6`] for the last pass: only the first `cols` outputs (the rest fall
/// outside the image), with bias and ReLU.
#[inline(always)]
fn at6_finish<T: WithDType>(s: [&[T]; 6], dst: &mut [T], cols: usize, fused: &Fused<T>, c: usize) {
    let (two, four, eight, zero) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(8.0), T::from_f64(0.0));
    let [s0, s1, s2, s3, s4, s5] = s;
    let (s0, s1, s2, s3, s4, s5) = (&s0[..c], &s1[..c], &s2[..c], &s3[..c], &s4[..c], &s5[..c]);
    let bias = fused.bias.map(|b| &b[..c]);
    let finish = |v: T, i: usize| {
        let v = match bias {
            Some(b) => v + b[i],
            None => v,
        };
        if fused.relu && v < zero {
            zero
        } else {
            v
        }
    };
    if cols == TILE {
        // A whole tile: all four outputs in one pass over the inputs (the
        // partial-tile loop below reads each input once per output).
        let (d0, rest) = dst.split_at_mut(c);
        let (d1, rest) = rest.split_at_mut(c);
        let (d2, d3) = rest.split_at_mut(c);
        let d3 = &mut d3[..c];
        for i in 0..c {
            let (p, q) = (s1[i] + s2[i], s1[i] - s2[i]);
            let (r, t) = (s3[i] + s4[i], s3[i] - s4[i]);
            d0[i] = finish(s0[i] + p + r, i);
            d1[i] = finish(q + two * t, i);
            d2[i] = finish(p + four * r, i);
            d3[i] = finish(q + eight * t + s5[i], i);
        }
        return;
    }
    for (k, d) in dst.chunks_exact_mut(c).take(cols).enumerate() {
        let d = &mut d[..c];
        match k {
            0 => (0..c).for_each(|i| d[i] = finish(s0[i] + (s1[i] + s2[i]) + (s3[i] + s4[i]), i)),
            1 => (0..c).for_each(|i| d[i] = finish((s1[i] - s2[i]) + two * (s3[i] - s4[i]), i)),
            2 => (0..c).for_each(|i| d[i] = finish((s1[i] + s2[i]) + four * (s3[i] + s4[i]), i)),
            _ => (0..c).for_each(|i| d[i] = finish((s1[i] - s2[i]) + eight * (s3[i] - s4[i]) + s5[i], i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Direct convolution in f64, channels-last, padding 1.
    fn direct(x: &[f64], h: usize, w: usize, weight: &[f64], c_out: usize, c_in: usize) -> Vec<f64> {
        let mut y = vec![0.0; h * w * c_out];
        for i in 0..h {
            for j in 0..w {
                for co in 0..c_out {
                    let mut s = 0.0;
                    for di in 0..3 {
                        for dj in 0..3 {
                            let (yy, xx) = (i as isize + di as isize - 1, j as isize + dj as isize - 1);
                            if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                                continue;
                            }
                            for ci in 0..c_in {
                                s += weight[((co * c_in + ci) * 3 + di) * 3 + dj]
                                    * x[((yy as usize) * w + xx as usize) * c_in + ci];
                            }
                        }
                    }
                    y[(i * w + j) * c_out + co] = s;
                }
            }
        }
        y
    }

    fn random(n: usize, rng: &mut impl Rng) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    #[test]
    fn matches_direct_convolution_on_every_edge_case() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        // Sides that are, and are not, multiples of the tile; 1-pixel images.
        for &(h, w, c_in, c_out) in &[(8, 8, 3, 5), (9, 7, 4, 2), (1, 1, 2, 3), (5, 13, 6, 4), (2, 3, 1, 1)] {
            let x = random(h * w * c_in, &mut rng);
            let k = random(c_out * c_in * 9, &mut rng);
            let want = direct(&x, h, w, &k, c_out, c_in);
            let got = conv3x3(&x, h, w, &Kernel::<f64>::new(&k, c_out, c_in), &Fused { input_mask: None, bias: None, relu: false });
            let err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-12, "{h}x{w} {c_in}->{c_out}: max error {err}");
        }
    }

    #[test]
    fn fuses_mask_bias_and_relu() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let (h, w, c_in, c_out) = (6, 10, 3, 4);
        let x = random(h * w * c_in, &mut rng);
        let mask = random(h * w * c_in, &mut rng);
        let bias = random(c_out, &mut rng);
        let k = random(c_out * c_in * 9, &mut rng);
        let masked: Vec<f64> = x.iter().zip(&mask).map(|(&v, &m)| if m > 0.0 { v } else { 0.0 }).collect();
        let want: Vec<f64> = direct(&masked, h, w, &k, c_out, c_in)
            .iter()
            .enumerate()
            .map(|(i, v)| (v + bias[i % c_out]).max(0.0))
            .collect();
        let fused = Fused { input_mask: Some(&mask), bias: Some(&bias), relu: true };
        let got = conv3x3(&x, h, w, &Kernel::<f64>::new(&k, c_out, c_in), &fused);
        let err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-12, "max error {err}");
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        // The transforms do the same IEEE operations in the same order at any
        // vector width (Rust never contracts a·b + c into an FMA), so they add
        // no CPU-to-CPU difference. (gemm picks its own kernels per CPU; those
        // may sum in another order, so bit-exact resume is promised on the
        // same kind of CPU only.)
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(10);
        let (h, w, c_in, c_out) = (11, 14, 37, 19);
        let x: Vec<f32> = (0..h * w * c_in).map(|_| rng.random_range(-3.0..3.0)).collect();
        let mask: Vec<f32> = (0..h * w * c_in).map(|_| rng.random_range(-1.0..1.0)).collect();
        let bias: Vec<f32> = (0..c_out).map(|_| rng.random_range(-1.0..1.0)).collect();
        let k = random(c_out * c_in * 9, &mut rng);
        let kernel = Kernel::<f32>::new(&k, c_out, c_in);
        let fused = Fused { input_mask: Some(&mask), bias: Some(&bias), relu: true };
        let levels = Simd::available();
        let baseline = conv3x3_with(Simd::Baseline, &x, h, w, &kernel, &fused);
        for simd in levels {
            let y = conv3x3_with(simd, &x, h, w, &kernel, &fused);
            assert!(y.iter().zip(&baseline).all(|(a, b)| a.to_bits() == b.to_bits()), "{simd:?} differs from baseline");
        }
    }

    #[test]
    fn f32_error_is_small_at_vgg_widths() {
        // 64 → 64 channels, values like a post-ReLU feature map.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (h, w, c_in, c_out) = (17, 23, 64, 64);
        let x: Vec<f64> = (0..h * w * c_in).map(|_| rng.random_range(0.0..50.0)).collect();
        let k: Vec<f64> = (0..c_out * c_in * 9).map(|_| rng.random_range(-0.05..0.05)).collect();
        let want = direct(&x, h, w, &k, c_out, c_in);
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let got = conv3x3(&x32, h, w, &Kernel::<f32>::new(&k, c_out, c_in), &Fused { input_mask: None, bias: None, relu: false });
        let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
        let err = want.iter().zip(&got).map(|(a, &b)| (a - b as f64).abs()).fold(0.0, f64::max);
        assert!(err / scale < 1e-5, "relative error {}", err / scale);
    }
}
