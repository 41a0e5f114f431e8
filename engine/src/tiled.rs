//! Exact tiled evaluation: the losses and their gradient for an image
//! larger than memory, the same (up to float rounding) as the untiled
//! ones. Gatys' loss makes it possible: the content loss and every Gram
//! matrix are sums over positions.
//!
//! ```text
//! pass 1, per tile:  forward(tile + halo) → each loss layer's features at
//!                    the tile's own positions → Σ (F − P)², G += FᵀF
//! between:           the losses, from the whole image's Gram matrices
//! pass 2, per tile,  forward(tile + halo) again, unless pass 1 kept the
//! in reverse:        tile's activations → ∂L/∂F at the tile's own positions
//!                    (zero elsewhere), with the global G − A → backward to
//!                    the tile + halo → added into ∂L/∂image
//! ```
//!
//! A tile owns a rectangle of positions at every layer; it is computed on
//! a crop of the image reaching [`Reach`] pixels past it, exactly as far as
//! the receptive field of the deepest layer reaches, so every feature it
//! owns equals the whole image's. Tile borders and crop starts lie on
//! multiples of the deepest layer's pooling stride, so a pooling window
//! never straddles one; where a crop meets the image's border it keeps the
//! image's own padding and SAME pooling rule. Total variation reads the
//! image itself and is computed whole.

use std::sync::Arc;

use candle_core::{DType, Tensor};

use crate::arch::{conv_index, pool_after};
use crate::error::{invalid, Result};
use crate::loss::{gram, total_variation, Losses};
use crate::params::RenderParams;
use crate::vgg::{Activations, Vgg19};

/// How far the first `depth` convs see around the positions a tile owns,
/// in image pixels, and the stride tile borders must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    /// Pixels needed before (above, left of) the tile.
    pub before: usize,
    /// Pixels needed after (below, right of) the tile.
    pub after: usize,
    /// 2^(pools before the deepest conv): crops and tile borders lie on
    /// multiples of it.
    pub align: usize,
}

impl Reach {
    /// `tile` rounded up to the stride tile borders keep (at least one).
    pub fn round(&self, tile: usize) -> usize {
        tile.max(1).div_ceil(self.align) * self.align
    }

    /// The receptive field of the first `depth` convs: walked back from
    /// one position of the deepest conv's output, each 3×3 conv widening
    /// the range by one at its scale and each 2×2 pool doubling it.
    pub fn of(depth: usize) -> Reach {
        let (mut lo, mut hi) = (0i64, 0i64);
        let mut align = 1usize;
        for i in (0..depth).rev() {
            (lo, hi) = (lo - 1, hi + 1);
            if i > 0 && pool_after(i - 1) {
                (lo, hi) = (2 * lo, 2 * hi + 1);
                align *= 2;
            }
        }
        // The position's own footprint in the image is [0, align).
        Reach { before: (-lo) as usize, after: (hi - (align as i64 - 1)) as usize, align }
    }
}

/// One side of a tile: the positions `[start, end)` it owns (image
/// pixels) and the crop `[crop_start, crop_end)` it is computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub crop_start: usize,
    pub crop_end: usize,
}

/// A side of `len` pixels cut into tiles of `tile` (the last one shorter),
/// crops starting on the pooling stride. (Aligning them also to the
/// Winograd tile, 64 px, did not make f32 features bit-identical — the
/// GEMMs' blocking depends on the map's size — and cost up to 63 px more
/// halo: 1.69× instead of 1.50× untiled at 1920×1080 in 1024 px tiles.)
pub fn spans(len: usize, tile: usize, reach: Reach) -> Vec<Span> {
    let grid = reach.align;
    let mut out = Vec::new();
    let mut start = 0;
    while start < len {
        let end = (start + tile).min(len);
        let crop_start = start.saturating_sub(reach.before) / grid * grid;
        out.push(Span { start, end, crop_start, crop_end: (end + reach.after).min(len) });
        start = end;
    }
    out
}

/// Every tile of an `h`×`w` image, (rows, columns), in the order they are
/// evaluated (rows of tiles, top to bottom); `tile` is rounded up to the
/// stride.
fn grid(h: usize, w: usize, tile: usize, reach: Reach) -> Vec<(Span, Span)> {
    let tile = reach.round(tile);
    let (rows, cols) = (spans(h, tile, reach), spans(w, tile, reach));
    rows.iter().flat_map(|r| cols.iter().map(move |c| (*r, *c))).collect()
}

/// Each tile's crop of an `h`×`w` image, (rows, columns), in the order
/// the tiles are evaluated.
pub fn crop_sizes(h: usize, w: usize, tile: usize, reach: Reach) -> Vec<(usize, usize)> {
    grid(h, w, tile, reach).iter().map(|(r, c)| (r.crop_end - r.crop_start, c.crop_end - c.crop_start)).collect()
}

/// Pools before conv `conv`, as a stride: its feature map is the image
/// shrunk by this factor (rounding up, SAME pooling).
fn scale(conv: usize) -> usize {
    1 << (0..conv).filter(|&j| pool_after(j)).count()
}

/// The positions a tile owns at a layer of stride `s`, in the full map's
/// coordinates: `[start/s, ⌈end/s⌉)`.
fn owned(span: &Span, s: usize) -> (usize, usize) {
    (span.start / s, span.end.div_ceil(s))
}

/// A content term: `P` of the whole image at one layer.
struct ContentTarget {
    conv: usize,
    weight: f64,
    features: Tensor,
}

/// A style term: the (blended) target Gram matrix `A` at one layer, in
/// f64 like the sums of the tiles' Gram matrices (summing many partial
/// Gram matrices in f32 loses more than one whole one does).
struct StyleTarget {
    conv: usize,
    weight: f64,
    gram: Tensor,
}

/// A render's losses, evaluated tile by tile.
pub struct Tiled {
    vgg: Arc<Vgg19>,
    depth: usize,
    tile: usize,
    reach: Reach,
    /// Tiles (the first ones) whose pass-1 activations pass 2 reuses.
    keep: usize,
    alpha: f64,
    beta: f64,
    tv_weight: f64,
    content: Vec<ContentTarget>,
    style: Vec<StyleTarget>,
}

impl Tiled {
    /// The targets, themselves computed tile by tile: the content's
    /// features at each content layer and each style's Gram matrices.
    /// `tile` is rounded up to the deepest layer's stride.
    pub fn new(vgg: Arc<Vgg19>, params: &RenderParams, content: &Tensor, styles: &[Tensor], tile: usize) -> Result<Self> {
        Self::with_reach(vgg, params, content, styles, tile, None)
    }

    /// [`Tiled::new`] with another reach than the receptive field's (tests
    /// show a smaller one is not exact).
    pub fn with_reach(vgg: Arc<Vgg19>, params: &RenderParams, content: &Tensor, styles: &[Tensor], tile: usize, reach: Option<Reach>) -> Result<Self> {
        let (content_layers, style_layers, depth) = params.active_layers()?;
        vgg.require_depth(depth)?;
        let reach = reach.unwrap_or(Reach::of(depth));
        if tile == 0 {
            return Err(invalid("tile", "a tile has at least one pixel a side"));
        }
        let tile = reach.round(tile);
        let mut this = Self { vgg, depth, tile, reach, keep: params.keep_tiles, alpha: params.alpha, beta: params.beta, tv_weight: params.tv_weight, content: Vec::new(), style: Vec::new() };

        let content_convs: Vec<usize> = content_layers.iter().map(|l| conv_index(&l.layer)).collect::<Result<_>>()?;
        let style_convs: Vec<usize> = style_layers.iter().map(|l| conv_index(&l.layer)).collect::<Result<_>>()?;
        let features = this.gather(content, &content_convs)?;
        this.content = content_layers.iter().zip(content_convs).zip(features).map(|((lw, conv), features)| ContentTarget { conv, weight: lw.weight, features }).collect();
        let blend = params.normalised_blend(styles.len());
        let mut grams: Vec<Option<Tensor>> = vec![None; style_convs.len()];
        for (style, &b) in styles.iter().zip(&blend) {
            for (slot, g) in grams.iter_mut().zip(this.grams(style, &style_convs)?) {
                let g = g.affine(b, 0.0)?;
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
        }
        this.style = style_layers
            .iter()
            .zip(style_convs)
            .zip(grams)
            .filter_map(|((lw, conv), gram)| gram.map(|gram| StyleTarget { conv, weight: lw.weight, gram }))
            .collect();
        Ok(this)
    }

    /// The tile side actually used (rounded up to the stride).
    pub fn tile(&self) -> usize {
        self.tile
    }

    /// Every tile of an `h`×`w` image: (rows, columns).
    fn tiles(&self, h: usize, w: usize) -> Vec<(Span, Span)> {
        grid(h, w, self.tile, self.reach)
    }

    /// The image's crop for a tile, `[1, 3, ch, cw]`.
    fn crop(image: &Tensor, (r, c): &(Span, Span)) -> Result<Tensor> {
        Ok(image.narrow(2, r.crop_start, r.crop_end - r.crop_start)?.narrow(3, c.crop_start, c.crop_end - c.crop_start)?.contiguous()?)
    }

    /// The positions a tile owns in a crop's feature map `[1, h, w, C]`
    /// of conv `conv`.
    fn own(features: &Tensor, conv: usize, (r, c): &(Span, Span)) -> Result<Tensor> {
        let s = scale(conv);
        let ((r0, r1), (c0, c1)) = (owned(r, s), owned(c, s));
        Ok(features.narrow(1, r0 - r.crop_start / s, r1 - r0)?.narrow(2, c0 - c.crop_start / s, c1 - c0)?.contiguous()?)
    }

    /// The same positions of a whole image's feature map.
    fn own_full(features: &Tensor, conv: usize, (r, c): &(Span, Span)) -> Result<Tensor> {
        let s = scale(conv);
        let ((r0, r1), (c0, c1)) = (owned(r, s), owned(c, s));
        Ok(features.narrow(1, r0, r1 - r0)?.narrow(2, c0, c1 - c0)?.contiguous()?)
    }

    /// The whole image's features at `convs`, assembled from the tiles'.
    fn gather(&self, image: &Tensor, convs: &[usize]) -> Result<Vec<Tensor>> {
        let (_, _, h, w) = image.dims4()?;
        let rows = spans(h, self.tile, self.reach);
        let cols = spans(w, self.tile, self.reach);
        let mut per_conv: Vec<Vec<Tensor>> = vec![Vec::new(); convs.len()];
        for r in &rows {
            let mut row: Vec<Vec<Tensor>> = vec![Vec::new(); convs.len()];
            for c in &cols {
                let tile = (*r, *c);
                let acts = self.vgg.forward(&Self::crop(image, &tile)?, self.depth)?;
                for (k, &conv) in convs.iter().enumerate() {
                    row[k].push(Self::own(&acts.features[conv], conv, &tile)?);
                }
            }
            for (k, parts) in row.into_iter().enumerate() {
                per_conv[k].push(Tensor::cat(&parts, 2)?);
            }
        }
        per_conv.into_iter().map(|rows| Ok(Tensor::cat(&rows, 1)?)).collect()
    }

    /// The whole image's Gram matrices at `convs`, summed over the tiles.
    fn grams(&self, image: &Tensor, convs: &[usize]) -> Result<Vec<Tensor>> {
        let (_, _, h, w) = image.dims4()?;
        let mut sums: Vec<Option<Tensor>> = vec![None; convs.len()];
        for tile in self.tiles(h, w) {
            let acts = self.vgg.forward(&Self::crop(image, &tile)?, self.depth)?;
            for (slot, &conv) in sums.iter_mut().zip(convs) {
                let g = gram(&Self::own(&acts.features[conv], conv, &tile)?)?.to_dtype(DType::F64)?;
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
        }
        sums.into_iter().map(|g| g.ok_or_else(|| invalid("tile", "the image has no pixels"))).collect()
    }

    /// The losses of `image` and, if `with_grad`, the gradient of the total
    /// with respect to it: the same as [`crate::Renderer`]'s untiled ones,
    /// up to the order floats are added in.
    pub fn losses(&self, image: &Tensor, with_grad: bool) -> Result<(Losses, Option<Tensor>)> {
        let (_, _, h, w) = image.dims4()?;
        let tiles = self.tiles(h, w);
        // Pass 1: Σ(F − P)² per content layer, G per style layer.
        let mut content_sums = vec![0f64; self.content.len()];
        let mut grams: Vec<Option<Tensor>> = vec![None; self.style.len()];
        // Pass 2 runs the tiles in reverse: the last tile's activations
        // are kept (it starts with them), and the first `keep` tiles'.
        let mut kept: Vec<Option<Activations>> = tiles.iter().map(|_| None).collect();
        for (i, tile) in tiles.iter().enumerate() {
            let acts = self.vgg.forward(&Self::crop(image, tile)?, self.depth)?;
            for (sum, t) in content_sums.iter_mut().zip(&self.content) {
                let diff = (Self::own(&acts.features[t.conv], t.conv, tile)? - Self::own_full(&t.features, t.conv, tile)?)?;
                *sum += diff.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            }
            for (slot, t) in grams.iter_mut().zip(&self.style) {
                let g = gram(&Self::own(&acts.features[t.conv], t.conv, tile)?)?.to_dtype(DType::F64)?;
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
            if with_grad && (i < self.keep || i + 1 == tiles.len()) {
                kept[i] = Some(acts);
            }
        }
        let mut losses = Losses::default();
        for (sum, t) in content_sums.iter().zip(&self.content) {
            losses.content += t.weight * sum / (4.0 * t.features.elem_count() as f64);
        }
        // Per style layer: G − A and its normaliser N²·M² (M: the whole map's positions).
        let mut style_diffs = Vec::with_capacity(self.style.len());
        for (g, t) in grams.into_iter().zip(&self.style) {
            let g = g.ok_or_else(|| invalid("tile", "the image has no pixels"))?;
            let n = t.gram.dim(0)? as f64;
            let s = scale(t.conv);
            let m = (h.div_ceil(s) * w.div_ceil(s)) as f64;
            let diff = (g - &t.gram)?;
            let n2m2 = n * n * m * m;
            losses.style += t.weight * diff.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()? / (4.0 * n2m2);
            style_diffs.push(diff.affine(self.beta * t.weight / n2m2, 0.0)?.to_dtype(image.dtype())?);
        }
        let tv = if self.tv_weight > 0.0 { Some(total_variation(image)?) } else { None };
        losses.tv = tv.as_ref().map_or(0.0, |(v, _)| *v);
        losses.total = self.alpha * losses.content + self.beta * losses.style + self.tv_weight * losses.tv;
        if !with_grad {
            return Ok((losses, None));
        }

        // Pass 2: each tile's owned positions' gradient, back to its crop.
        let mut grad = match &tv {
            Some((_, g)) => g.affine(self.tv_weight, 0.0)?,
            None => image.zeros_like()?,
        };
        for (i, tile) in tiles.iter().enumerate().rev() {
            let acts = match kept[i].take() {
                Some(acts) => acts,
                None => self.vgg.forward(&Self::crop(image, tile)?, self.depth)?,
            };
            let mut at_layer: Vec<Option<Tensor>> = vec![None; self.depth];
            let mut add = |conv: usize, g: Tensor| -> Result<()> {
                let slot = &mut at_layer[conv];
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
                Ok(())
            };
            for t in &self.content {
                let own = Self::own(&acts.features[t.conv], t.conv, tile)?;
                let diff = (own - Self::own_full(&t.features, t.conv, tile)?)?;
                add(t.conv, diff.affine(self.alpha * t.weight / (2.0 * t.features.elem_count() as f64), 0.0)?)?;
            }
            for (t, diff) in self.style.iter().zip(&style_diffs) {
                let own = Self::own(&acts.features[t.conv], t.conv, tile)?;
                let (_, oh, ow, n) = own.dims4()?;
                add(t.conv, own.reshape((oh * ow, n))?.matmul(diff)?.reshape((1, oh, ow, n))?)?;
            }
            // Zero outside the owned positions: pad each layer's gradient
            // to the crop's feature map.
            let (r, c) = tile;
            let mut padded: Vec<Option<Tensor>> = Vec::with_capacity(self.depth);
            for (conv, g) in at_layer.into_iter().enumerate() {
                padded.push(match g {
                    None => None,
                    Some(g) => {
                        let s = scale(conv);
                        let (_, fh, fw, _) = acts.features[conv].dims4()?;
                        let ((r0, r1), (c0, c1)) = (owned(r, s), owned(c, s));
                        let (top, left) = (r0 - r.crop_start / s, c0 - c.crop_start / s);
                        Some(g.pad_with_zeros(1, top, fh - top - (r1 - r0))?.pad_with_zeros(2, left, fw - left - (c1 - c0))?)
                    }
                });
            }
            let g = self.vgg.backward(&acts, &padded)?;
            let g = g.pad_with_zeros(2, r.crop_start, h - r.crop_end)?.pad_with_zeros(3, c.crop_start, w - c.crop_end)?;
            grad = (grad + g)?;
        }
        Ok((losses, Some(grad)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receptive_field_of_conv5_1_is_70_pixels_each_side_on_a_stride_of_16() {
        assert_eq!(Reach::of(13), Reach { before: 70, after: 70, align: 16 });
        // conv1_1 alone: one pixel each side, no pooling.
        assert_eq!(Reach::of(1), Reach { before: 1, after: 1, align: 1 });
        // conv2_1: two convs at full size, a pool, one conv at half size.
        assert_eq!(Reach::of(3), Reach { before: 4, after: 4, align: 2 });
    }

    #[test]
    fn tiles_cover_the_side_once_and_crops_start_on_the_stride() {
        let reach = Reach::of(13);
        let s = spans(333, 64, reach);
        assert_eq!(s.first().map(|t| t.start), Some(0));
        assert_eq!(s.last().map(|t| t.end), Some(333));
        for pair in s.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        for t in &s {
            assert_eq!(t.crop_start % 16, 0, "the pooling stride");
            assert!(t.crop_start + reach.before <= t.start || t.crop_start == 0, "the crop reaches {} px before the tile", reach.before);
            assert!(t.crop_end == 333 || t.crop_end == t.end + reach.after);
        }
    }
}
