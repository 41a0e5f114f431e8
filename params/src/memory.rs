//! The memory model: what a render needs at a size, run one way or
//! another, fitted to the peaks `farmctl bench` measures (BENCHMARKS.md),
//! and the plan that fits a render into a budget. The coordinator prices
//! jobs with it at submit and when leasing, a worker and `farmctl render`
//! plan their tiling with it.

use crate::execution::Execution;
use crate::geometry::{crop_sizes, Reach};
use crate::arch::{conv_index, VGG19};
use crate::params::{Optimizer, RenderParams};

/// The smallest tile the farm counts on ([`RenderParams::least_peak_bytes`]).
pub const FARM_TILE_FLOOR: usize = 512;

impl RenderParams {
    /// A first-order estimate of a render's peak memory at `width`×`height`
    /// on the CPU engine, in bytes: a fixed part (weights, runtime) plus,
    /// per pixel, the feature maps of every layer up to the deepest one a
    /// loss reads (kept for the backward pass, ≈2.2× with their gradients
    /// and temporaries: fitted to the peaks `farmctl bench` measured, 712,
    /// 1693, 3212 and 5497 MiB at 333×250, 800×600, 1200×900 and
    /// 1920×1080), plus L-BFGS's history. `farmctl render` refuses with it
    /// before it starts, and the farm at submit and when leasing.
    pub fn estimated_peak_bytes(&self, width: u32, height: u32) -> u64 {
        self.peak_bytes(&Execution::default(), width, height)
    }

    /// [`Self::estimated_peak_bytes`] run as `execution` says: tiled, the
    /// feature maps are one crop's at a time, plus the kept tiles'.
    pub fn peak_bytes(&self, execution: &Execution, width: u32, height: u32) -> u64 {
        const FIXED: f64 = 512.0 * 1024.0 * 1024.0;
        const PER_FEATURE: f64 = 4.0 * 2.2;
        // A kept tile's activations: its feature maps alone.
        const KEPT_PER_FEATURE: f64 = 4.0;
        let deepest = self.deepest_conv();
        // Feature values per input pixel: each layer's channels over the
        // 4^(block-1) by which pooling has shrunk its map.
        let per_pixel: f64 = VGG19[..=deepest].iter().map(|l| l.out_channels as f64 / 4f64.powi(l.block as i32 - 1)).sum();
        let pixels = width as f64 * height as f64;
        let history = match self.optimizer {
            Optimizer::Lbfgs => 2.0 * self.lbfgs_history as f64 * 3.0 * 4.0,
            Optimizer::Adam => 3.0 * 3.0 * 4.0,
        };
        let Some(tile) = execution.tile else {
            return (FIXED + pixels * (per_pixel * PER_FEATURE + history)) as u64;
        };
        // Tiled: at full size the image-sized buffers (below), the
        // optimizer's history and the content target's features; then the worst moment of pass 2 (which runs
        // the tiles in reverse): one crop's feature maps and its backward's,
        // beside the activations still kept for the tiles before it.
        let reach = Reach::of(deepest + 1);
        let content: f64 = self
            .content_layers
            .iter()
            .filter_map(|l| conv_index(&l.layer).ok())
            .map(|i| VGG19[i].out_channels as f64 / 4f64.powi(VGG19[i].block as i32 - 1) * 4.0)
            .sum();
        let (h, w) = (height as usize, width as usize);
        let mut kept = 0f64;
        let mut worst = 0f64;
        for (i, (ch, cw)) in crop_sizes(h, w, tile, reach).into_iter().enumerate() {
            // A crop's maps, and its scratch a stride wider where the crop
            // ends inside the image.
            let current = (ch + reach.align).min(h) as f64 * (cw + reach.align).min(w) as f64;
            worst = worst.max(current * per_pixel * PER_FEATURE + kept);
            if i < execution.keep_tiles {
                kept += (ch * cw) as f64 * per_pixel * KEPT_PER_FEATURE;
            }
        }
        // Image-sized: the image, the gradient being summed, a tile's
        // gradient padded to the image, their sum.
        (FIXED + worst + pixels * (history + content + 4.0 * 3.0 * 4.0)) as u64
    }

    /// In tiles of `tile`: the most tiles [`Execution::keep_tiles`] may
    /// keep for the render at `width`×`height` to stay within `budget`
    /// bytes (0 when not even one more fits).
    pub fn most_tiles_kept(&self, tile: usize, width: u32, height: u32, budget: u64) -> usize {
        let reach = Reach::of(self.deepest_conv() + 1);
        let tiles = crop_sizes(height as usize, width as usize, tile, reach).len();
        let fits = |keep_tiles: usize| self.peak_bytes(&Execution { tile: Some(tile), keep_tiles, ..Execution::default() }, width, height) <= budget;
        // The peak grows with k: the largest k that fits, by bisection.
        let (mut lo, mut hi) = (0, tiles.saturating_sub(1));
        if !fits(0) {
            return 0;
        }
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    /// The largest tile side (a multiple of 16) whose render at
    /// `width`×`height` fits `budget` bytes by [`Self::estimated_peak_bytes`];
    /// `None` when not even 16 does.
    pub fn largest_fitting_tile(&self, width: u32, height: u32, budget: u64) -> Option<usize> {
        let fits = |t: usize| self.peak_bytes(&Execution { tile: Some(t), ..Execution::default() }, width, height) <= budget;
        let largest = (width.max(height) as usize).div_ceil(16) * 16;
        (1..=largest / 16).rev().map(|k| 16 * k).find(|&t| fits(t))
    }

    /// The least memory a farm device needs for this render: untiled, or
    /// in tiles of [`FARM_TILE_FLOOR`] pixels when that is less (a worker
    /// tiles as its memory requires; smaller tiles would fit still less
    /// memory, at a cost in halos no farm should pay unasked).
    pub fn least_peak_bytes(&self, width: u32, height: u32) -> u64 {
        let tiled = Execution { tile: Some(FARM_TILE_FLOOR), ..Execution::default() };
        self.estimated_peak_bytes(width, height).min(self.peak_bytes(&tiled, width, height))
    }

    /// How a machine with `budget` bytes runs this render at
    /// `width`×`height` — the one rule `farmctl render` and a worker share:
    /// in tiles of `tile` when given, else untiled when that fits (or the
    /// budget is unknown), else in the largest tile that fits (none fits:
    /// untiled, and the render finds out); tiled, as many tiles' activations
    /// kept as the rest of the budget holds. The bit depth is left at 8.
    pub fn plan(&self, width: u32, height: u32, budget: Option<u64>, tile: Option<usize>) -> Execution {
        let Some(budget) = budget else {
            return Execution { tile, ..Execution::default() };
        };
        let tile = tile.or_else(|| if self.estimated_peak_bytes(width, height) <= budget { None } else { self.largest_fitting_tile(width, height, budget) });
        let keep_tiles = tile.map_or(0, |t| self.most_tiles_kept(t, width, height, budget));
        Execution { tile, keep_tiles, ..Execution::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_estimate_is_near_the_measured_peaks_and_grows_with_pixels() {
        let p = RenderParams::default();
        let mib = |w, h| p.estimated_peak_bytes(w, h) as f64 / (1u64 << 20) as f64;
        // Measured peaks (`farmctl bench`, BENCHMARKS.md), within 10%.
        for (w, h, measured) in [(333, 250, 712.0), (800, 600, 1693.0), (1200, 900, 3212.0), (1920, 1080, 5497.0)] {
            assert!((mib(w, h) - measured).abs() < 0.10 * measured, "{w}x{h}: model {} MiB, measured {measured}", mib(w, h));
        }
        assert!(mib(8192, 8192) > 100_000.0, "an 8K square needs far more than any device has");
        // Tiled, the feature maps are one crop's: 4K in a few GiB.
        let tiled = |tile, keep_tiles| Execution { tile: Some(tile), keep_tiles, ..Execution::default() };
        assert!(p.peak_bytes(&tiled(512, 0), 3840, 2160) < 8 << 30 && p.estimated_peak_bytes(3840, 2160) > 16 << 30);
        assert!(p.peak_bytes(&tiled(512, 0), 800, 600) <= p.estimated_peak_bytes(800, 600) + (64 << 20), "a tile larger than the image costs about what untiled does");
        let t = p.largest_fitting_tile(3840, 2160, 8 << 30).unwrap();
        assert_eq!(t % 16, 0);
        assert!(p.peak_bytes(&tiled(t, 0), 3840, 2160) <= 8 << 30);
        assert!(p.peak_bytes(&tiled(t + 16, 0), 3840, 2160) > 8 << 30);
        // Measured tiled peaks at 1920x1080 (`farmctl bench --tile`), within
        // 10%: tiles of 1024 keeping none of the 4 or 3, tiles of 512.
        for (tile, keep_tiles, measured) in [(1024, 0, 3771.0), (1024, 3, 4848.0), (512, 0, 1748.0)] {
            let model = p.peak_bytes(&tiled(tile, keep_tiles), 1920, 1080) as f64 / (1u64 << 20) as f64;
            assert!((model - measured).abs() < 0.10 * measured, "tile {tile}, keep {keep_tiles}: model {model} MiB, measured {measured}");
        }
    }

    #[test]
    fn tiles_are_kept_as_far_as_the_budget_goes() {
        let p = RenderParams::default();
        let peak = |keep_tiles| p.peak_bytes(&Execution { tile: Some(512), keep_tiles, ..Execution::default() }, 3840, 2160);
        // 8 × 5 tiles: each kept one costs memory, the last one nothing more.
        assert!(peak(1) > peak(0) && peak(20) > peak(10));
        assert_eq!(peak(39), peak(1000));
        let budget = peak(10) + (peak(11) - peak(10)) / 2;
        assert_eq!(p.most_tiles_kept(512, 3840, 2160, budget), 10);
        assert_eq!(p.most_tiles_kept(512, 3840, 2160, u64::MAX), 39, "all but the last, which is always kept");
        assert_eq!(p.most_tiles_kept(512, 3840, 2160, peak(0) - 1), 0, "not even one kept fits");
    }


    #[test]
    fn a_render_is_planned_untiled_when_it_fits_and_else_in_the_largest_tile_that_does() {
        let p = RenderParams::default();
        let untiled = p.estimated_peak_bytes(3840, 2160);
        assert_eq!(p.plan(3840, 2160, None, None), Execution::default(), "no budget known: untiled");
        assert_eq!(p.plan(3840, 2160, Some(untiled), None), Execution::default(), "it fits");
        let small = p.plan(3840, 2160, Some(4 << 30), None);
        let tile = small.tile.expect("4 GiB does not hold 4K untiled");
        assert_eq!(Some(tile), p.largest_fitting_tile(3840, 2160, 4 << 30));
        assert!(p.peak_bytes(&small, 3840, 2160) <= 4 << 30, "the plan fits its budget, kept tiles included");
        assert_eq!(small.keep_tiles, p.most_tiles_kept(tile, 3840, 2160, 4 << 30));
        // A tile the user chose is kept; a budget too small for anything
        // leaves the render untiled (it fails as out of memory).
        assert_eq!(p.plan(3840, 2160, Some(u64::MAX), Some(256)).tile, Some(256));
        assert_eq!(p.plan(3840, 2160, Some(1 << 20), None).tile, None);
        // The farm's floor: 4K needs far less in 512 px tiles than untiled.
        assert!(p.least_peak_bytes(3840, 2160) < untiled / 2);
        assert_eq!(p.least_peak_bytes(333, 250), p.estimated_peak_bytes(333, 250), "small renders are priced untiled");
    }
}
