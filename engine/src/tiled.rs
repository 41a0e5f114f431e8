//! Exact tiled evaluation: the losses and their gradient for an image
//! larger than memory, the same (up to float rounding) as the untiled
//! ones. Gatys' loss makes it possible: the content loss and every Gram
//! matrix are sums over positions — and so is every [`crate::loss::Term`]'s
//! statistic, which is all this module asks of a term. It names none.
//!
//! ```text
//! pass 1, per tile:  forward(tile + halo) → each layer term's statistic of
//!                    the tile's own positions, added up (Σ (F − P)², FᵀF)
//! between:           each term's value and adjoint from its whole statistic
//! pass 2, per tile,  forward(tile + halo) again, unless pass 1 kept the
//! in reverse:        tile's activations → each term's gradient at the
//!                    tile's own positions (zero elsewhere) → backward to
//!                    the tile + halo → added into ∂L/∂image
//! ```
//!
//! A tile owns a rectangle of positions at every layer; it is computed on
//! a crop of the image reaching [`Reach`] pixels past it, exactly as far as
//! the receptive field of the deepest layer reaches, so every feature it
//! owns equals the whole image's. Tile borders and crop starts lie on
//! multiples of the deepest layer's pooling stride, so a pooling window
//! never straddles one; where a crop meets the image's border it keeps the
//! image's own padding and SAME pooling rule. A term that reads the image
//! itself (total variation) is given the whole image.

use std::sync::Arc;

use candle_core::Tensor;

use crate::geometry::{grid, owned, scale, spans, Reach, Span};
use crate::error::{invalid, Result};
use crate::loss::{sum_terms, Losses, PartWeights, Reads, Weighted, Window};
use crate::vgg::{Activations, Vgg19};

/// A render's losses, evaluated tile by tile: the same [`crate::loss::Term`]s as the
/// untiled evaluation, each layer term's statistic summed over the tiles
/// in pass 1 and its gradient taken tile by tile in pass 2.
pub struct Tiled {
    vgg: Arc<Vgg19>,
    depth: usize,
    tile: usize,
    reach: Reach,
    /// Tiles (the first ones) whose pass-1 activations pass 2 reuses.
    keep: usize,
}

impl Tiled {
    /// Tiles of `tile` pixels a side (rounded up to the stride of the
    /// deepest of the first `depth` convs), keeping the activations of the
    /// first `keep` tiles for pass 2.
    pub fn new(vgg: Arc<Vgg19>, depth: usize, tile: usize, keep: usize) -> Result<Self> {
        Self::with_reach(vgg, depth, tile, keep, None)
    }

    /// [`Tiled::new`] with another reach than the receptive field's (tests
    /// show a smaller one is not exact).
    pub fn with_reach(vgg: Arc<Vgg19>, depth: usize, tile: usize, keep: usize, reach: Option<Reach>) -> Result<Self> {
        vgg.require_depth(depth)?;
        if tile == 0 {
            return Err(invalid("tile", "a tile has at least one pixel a side"));
        }
        let reach = reach.unwrap_or(Reach::of(depth));
        Ok(Self { vgg, depth, tile: reach.round(tile), reach, keep })
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

    /// The positions a tile owns in a crop's feature map `[1, h, w, C]` of
    /// conv `conv`, and where they sit in the whole image's map.
    fn own(features: &Tensor, conv: usize, (r, c): &(Span, Span), (h, w): (usize, usize)) -> Result<(Tensor, Window)> {
        let s = scale(conv);
        let ((r0, r1), (c0, c1)) = (owned(r, s), owned(c, s));
        let block = features.narrow(1, r0 - r.crop_start / s, r1 - r0)?.narrow(2, c0 - c.crop_start / s, c1 - c0)?.contiguous()?;
        Ok((block, Window { top: r0, left: c0, whole: (h.div_ceil(s), w.div_ceil(s)) }))
    }

    /// The whole image's features at `convs`, assembled from the tiles'
    /// (a content target: one map per layer, small at the deep layers).
    pub fn features(&self, image: &Tensor, convs: &[usize]) -> Result<Vec<Tensor>> {
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
                    row[k].push(Self::own(&acts.features[conv], conv, &tile, (h, w))?.0);
                }
            }
            for (k, parts) in row.into_iter().enumerate() {
                per_conv[k].push(Tensor::cat(&parts, 2)?);
            }
        }
        per_conv.into_iter().map(|rows| Ok(Tensor::cat(&rows, 1)?)).collect()
    }

    /// Per conv of `convs`, the sum over the tiles of `statistic` of each
    /// tile's own features (a style target's Gram matrix: the whole map's,
    /// without the whole map).
    pub fn sums(&self, image: &Tensor, convs: &[usize], statistic: impl Fn(&Tensor, Window) -> Result<Tensor>) -> Result<Vec<Tensor>> {
        let (_, _, h, w) = image.dims4()?;
        let mut sums: Vec<Option<Tensor>> = vec![None; convs.len()];
        for tile in self.tiles(h, w) {
            let acts = self.vgg.forward(&Self::crop(image, &tile)?, self.depth)?;
            for (slot, &conv) in sums.iter_mut().zip(convs) {
                let (block, at) = Self::own(&acts.features[conv], conv, &tile, (h, w))?;
                add_into(slot, statistic(&block, at)?)?;
            }
        }
        sums.into_iter().map(|g| g.ok_or_else(|| invalid("tile", "the image has no pixels"))).collect()
    }

    /// The losses of `terms` at `image` and, if `with_grad`, the gradient
    /// of the total with respect to it: the same as the untiled
    /// evaluation's ([`crate::loss::evaluate_terms`]), up to the order
    /// floats are added in.
    pub fn losses(&self, terms: &[Weighted], weights: PartWeights, image: &Tensor, with_grad: bool) -> Result<(Losses, Option<Tensor>)> {
        let (_, _, h, w) = image.dims4()?;
        let tiles = self.tiles(h, w);
        let whole_image = Window::whole(h, w);
        // Pass 1: each layer term's statistic, summed over the tiles; each
        // image term's, of the whole image.
        let mut statistics: Vec<Option<Tensor>> = vec![None; terms.len()];
        let mut wholes = vec![(h, w); terms.len()];
        for (i, t) in terms.iter().enumerate() {
            match t.reads {
                Reads::Image => statistics[i] = Some(t.term.statistic(image, whole_image)?),
                Reads::Layer(conv) => {
                    let s = scale(conv);
                    wholes[i] = (h.div_ceil(s), w.div_ceil(s));
                }
            }
        }
        // Pass 2 runs the tiles in reverse: the last tile's activations
        // are kept (it starts with them), and the first `keep` tiles'.
        let mut kept: Vec<Option<Activations>> = tiles.iter().map(|_| None).collect();
        for (i, tile) in tiles.iter().enumerate() {
            let acts = self.vgg.forward(&Self::crop(image, tile)?, self.depth)?;
            for (slot, t) in statistics.iter_mut().zip(terms) {
                if let Reads::Layer(conv) = t.reads {
                    let (block, at) = Self::own(&acts.features[conv], conv, tile, (h, w))?;
                    add_into(slot, t.term.statistic(&block, at)?)?;
                }
            }
            if with_grad && (i < self.keep || i + 1 == tiles.len()) {
                kept[i] = Some(acts);
            }
        }
        let statistics = statistics.into_iter().map(|s| s.ok_or_else(|| invalid("tile", "the image has no pixels"))).collect::<Result<Vec<_>>>()?;
        let (losses, adjoints) = sum_terms(terms, weights, &statistics, &wholes)?;
        if !with_grad {
            return Ok((losses, None));
        }

        // The image terms' gradient, whole; then each tile's owned
        // positions' gradient, back to its crop.
        let mut grad: Option<Tensor> = None;
        for (t, adjoint) in terms.iter().zip(&adjoints) {
            if t.reads == Reads::Image {
                add_into(&mut grad, t.term.grad(image, whole_image, adjoint)?)?;
            }
        }
        let mut grad = match grad {
            Some(g) => g,
            None => image.zeros_like()?,
        };
        for (i, tile) in tiles.iter().enumerate().rev() {
            let acts = match kept[i].take() {
                Some(acts) => acts,
                None => self.vgg.forward(&Self::crop(image, tile)?, self.depth)?,
            };
            let mut at_layer: Vec<Option<Tensor>> = vec![None; self.depth];
            for (t, adjoint) in terms.iter().zip(&adjoints) {
                if let Reads::Layer(conv) = t.reads {
                    let (block, at) = Self::own(&acts.features[conv], conv, tile, (h, w))?;
                    add_into(&mut at_layer[conv], t.term.grad(&block, at, adjoint)?)?;
                }
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
            if padded.iter().all(Option::is_none) {
                continue;
            }
            let g = self.vgg.backward(&acts, &padded)?;
            let g = g.pad_with_zeros(2, r.crop_start, h - r.crop_end)?.pad_with_zeros(3, c.crop_start, w - c.crop_end)?;
            grad = (grad + g)?;
        }
        Ok((losses, Some(grad)))
    }
}

/// `slot += value` (or `= value` when empty).
fn add_into(slot: &mut Option<Tensor>, value: Tensor) -> Result<()> {
    *slot = Some(match slot.take() {
        Some(acc) => (acc + value)?,
        None => value,
    });
    Ok(())
}
