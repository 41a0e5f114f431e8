//! Where the tiles of a tiled render lie: the receptive field a tile's
//! crop must reach past the positions it owns ([`Reach`]), each side cut
//! into spans, and the positions a tile owns at each layer. Pure
//! arithmetic on VGG-19's table: the engine's tiled evaluation and the
//! memory model both read it, and it reads nothing but [`crate::arch`].

use crate::arch::pool_after;

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
pub fn grid(h: usize, w: usize, tile: usize, reach: Reach) -> Vec<(Span, Span)> {
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
pub fn scale(conv: usize) -> usize {
    1 << (0..conv).filter(|&j| pool_after(j)).count()
}

/// The positions a tile owns at a layer of stride `s`, in the full map's
/// coordinates: `[start/s, ⌈end/s⌉)`.
pub fn owned(span: &Span, s: usize) -> (usize, usize) {
    (span.start / s, span.end.div_ceil(s))
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
