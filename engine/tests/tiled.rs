//! Tiled evaluation is exact: against the untiled losses and gradient at
//! sizes where both fit, with several tile sizes and odd image sizes; a
//! 10-iteration render tiled equals the untiled one; and the halo is the
//! smallest that stays exact — one pixel less breaks it.

mod common;

use std::sync::Arc;

use common::Seeded;
use stylefarm_engine::geometry::Reach;
use stylefarm_engine::tiled::Tiled;
use stylefarm_engine::{DType, Execution, InputConvention, Optimizer, RenderParams, Renderer, Tensor, Vgg19};

/// A narrow random VGG (VGG-19's topology, a fixed seed: the tolerances
/// below compare float paths, and a test run must be the same every time).
fn vgg(dtype: DType) -> Arc<Vgg19> {
    let weights = Seeded::new(19).narrow_vgg(InputConvention::CaffeBgr);
    Arc::new(Vgg19::new(&weights, Default::default(), dtype).unwrap())
}

fn params() -> RenderParams {
    // Every default layer (conv1_1 … conv5_1, conv4_2) and TV.
    RenderParams { tv_weight: 0.05, alpha: 5.0, ..RenderParams::default() }
}

/// Tiles of `tile` pixels, the first `keep` kept for pass 2.
fn tiles(tile: usize, keep: usize) -> Execution {
    Execution { tile: Some(tile), keep_tiles: keep, ..Execution::default() }
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

/// ‖a − b‖ / ‖b‖.
fn rel_norm(a: &Tensor, b: &Tensor) -> f64 {
    let norm = |t: &Tensor| t.to_dtype(DType::F64).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    norm(&(a - b).unwrap()) / norm(b)
}

struct Case {
    content: Tensor,
    style: Tensor,
    image: Tensor,
}

fn case(h: usize, w: usize, dtype: DType) -> Case {
    let mut rng = Seeded::new((h * 1000 + w) as u64);
    let mut t = || rng.image(h, w).to_dtype(dtype).unwrap();
    Case { content: t(), style: t(), image: t() }
}

/// In f32, tiled against untiled: the losses within 1e-5 and the gradient
/// within 1e-4, relative (measured: 2e-6 and 3e-6 on this CPU; the crops'
/// f32 convolutions round a little differently from the whole image's);
/// in f64 they agree to 1e-12 (`the_halo_is_the_smallest_that_stays_exact`).
#[test]
fn tiled_losses_and_gradients_equal_the_untiled_ones() {
    let net = vgg(DType::F32);
    let p = params();
    for (h, w) in [(101, 131), (97, 83)] {
        let c = case(h, w, DType::F32);
        let whole = Renderer::new(net.clone(), p.clone(), &c.content, &[c.style.clone()]).unwrap();
        let (untiled, untiled_grad) = whole.loss_and_grad(&c.image).unwrap();
        for tile in [16, 32, 48, 200] {
            let tiled = Renderer::with_execution(net.clone(), p.clone(), &tiles(tile, 0), &c.content, &[c.style.clone()]).unwrap();
            let (got, got_grad) = tiled.loss_and_grad(&c.image).unwrap();
            for (name, t, u) in [("content", got.content, untiled.content), ("style", got.style, untiled.style), ("tv", got.tv, untiled.tv), ("total", got.total, untiled.total)] {
                assert!(rel(t, u) <= 1e-5, "{h}x{w}, tile {tile}: {name} tiled {t}, untiled {u}");
            }
            let e = rel_norm(&got_grad, &untiled_grad);
            assert!(e <= 1e-4, "{h}x{w}, tile {tile}: gradient relative error {e}");
        }
    }
}

/// Keeping pass 1's activations instead of recomputing them changes
/// nothing, to the bit, whichever tiles are kept.
#[test]
fn keeping_tiles_changes_the_cost_not_the_result() {
    let net = vgg(DType::F32);
    let c = case(75, 101, DType::F32);
    let eval = |keep_tiles| {
        let tiled = Renderer::with_execution(net.clone(), params(), &tiles(32, keep_tiles), &c.content, &[c.style.clone()]).unwrap();
        let (losses, grad) = tiled.loss_and_grad(&c.image).unwrap();
        (losses.total, grad.flatten_all().unwrap().to_vec1::<f32>().unwrap())
    };
    // 3 × 4 tiles: none kept but the last, some, all.
    let none = eval(0);
    for keep in [1, 5, 12, 100] {
        let got = eval(keep);
        assert_eq!(got.0.to_bits(), none.0.to_bits(), "keep {keep}: the loss");
        assert!(got.1 == none.1, "keep {keep}: the gradient differs");
    }
}

/// A 10-iteration L-BFGS render, tiled and untiled: within 1e-4 of a pixel
/// value in f64 (where the evaluations agree to 1e-12) and in f32 (where
/// they agree to ~1e-6 and L-BFGS carries that to ~2e-5 here).
#[test]
fn a_tiled_render_equals_the_untiled_one() {
    for dtype in [DType::F64, DType::F32] {
        let net = vgg(dtype);
        let c = case(70, 90, dtype);
        let run = |tile: Option<usize>| {
            let p = RenderParams { iterations: 10, optimizer: Optimizer::Lbfgs, ..params() };
            let r = Renderer::with_execution(net.clone(), p, &Execution { tile, keep_tiles: 2, ..Execution::default() }, &c.content, &[c.style.clone()]).unwrap();
            let mut state = r.initial_state(&c.content, None).unwrap();
            while state.iteration < 10 {
                r.step(&mut state).unwrap();
            }
            state.image.to_dtype(DType::F64).unwrap()
        };
        let (whole, tiled) = (run(None), run(Some(32)));
        let diff = (&whole - &tiled).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
        assert!(diff <= 1e-4, "{dtype:?}: largest per-pixel difference after 10 iterations: {diff}");
    }
}

#[test]
fn the_halo_is_the_smallest_that_stays_exact() {
    // f64, so "exact" is 1e-10 and a missing pixel stands far above it.
    let net = vgg(DType::F64);
    let p = params();
    // Wide enough that a tile's crop ends inside the image (32 + 70 < 150).
    let c = case(40, 150, DType::F64);
    let whole = Renderer::new(net.clone(), p.clone(), &c.content, &[c.style.clone()]).unwrap();
    let (want, want_grad) = whole.loss_and_grad(&c.image).unwrap();
    let reach = Reach::of(13);
    // The untiled renderer's own terms (and targets), evaluated in tiles.
    let error = |reach: Reach| {
        let tiled = Tiled::with_reach(net.clone(), 13, 32, 0, Some(reach)).unwrap();
        let (got, grad) = tiled.losses(whole.terms(), whole.weights(), &c.image, true).unwrap();
        rel(got.total, want.total).max(rel_norm(&grad.unwrap(), &want_grad))
    };
    let exact = error(reach);
    assert!(exact < 1e-12, "the receptive field's halo: {exact}");
    // A pixel at the edge of conv5_1's receptive field weighs little in
    // the total, but far above rounding.
    let short = error(Reach { after: reach.after - 1, ..reach });
    assert!(short > 1e3 * exact.max(1e-15), "one pixel less after the tile should break it: {short} (exact: {exact})");
    // Every tile size is exact with the full halo.
    for tile in [16, 48, 64] {
        let tiled = Renderer::with_execution(net.clone(), p.clone(), &tiles(tile, 0), &c.content, &[c.style.clone()]).unwrap();
        let (got, grad) = tiled.loss_and_grad(&c.image).unwrap();
        let e = rel(got.total, want.total).max(rel_norm(&grad, &want_grad));
        assert!(e < 1e-12, "tile {tile}: {e}");
    }
}

/// A tiled L-BFGS render with coarse-to-fine, stopped and resumed from its
/// checkpoint without tiling (the tiling is not part of a render's
/// identity), ends where the uninterrupted tiled render does.
#[test]
fn a_tiled_coarse_to_fine_render_resumes_from_its_checkpoint_untiled() {
    use stylefarm_engine::session::Resample;
    use stylefarm_engine::{Cadence, Checkpoint, Control, EngineError, Hooks, Outcome, Pictures, Session};
    struct StopAfter(usize, usize);
    impl Hooks for StopAfter {
        type Error = EngineError;
        fn control(&mut self) -> Control {
            self.1 += 1;
            if self.1 > self.0 { Control::Stop } else { Control::Continue }
        }
    }
    // f32: checkpoints hold f32 images.
    let net = vgg(DType::F32);
    let c = case(60, 76, DType::F32);
    let pictures = |w: usize, h: usize| -> stylefarm_engine::Result<Pictures> {
        Ok(Pictures { content: stylefarm_engine::pixels::resize(&c.content, w, h)?, styles: vec![stylefarm_engine::pixels::resize(&c.style, w, h)?] })
    };
    let resample: Resample<'_> = &pictures;
    let p = RenderParams { iterations: 8, optimizer: Optimizer::Lbfgs, scales: vec![0.5], coarse_iters: Some(4), ..params() };
    let session = |tile| Session::with_execution(net.clone(), p.clone(), Execution { tile, ..Execution::default() }, pictures(76, 60).unwrap(), None).unwrap();

    let mut whole = session(Some(32));
    assert!(matches!(whole.run(&mut StopAfter(usize::MAX, 0), Cadence::default(), resample).unwrap(), Outcome::Finished(_)));
    let mut first = session(Some(32));
    // 4 coarse iterations, then 3 at full size.
    assert_eq!(first.run(&mut StopAfter(7, 0), Cadence::default(), resample).unwrap(), Outcome::Stopped);
    let checkpoint = Checkpoint::decode(&first.checkpoint().unwrap().encode().unwrap(), &stylefarm_engine::Device::Cpu).unwrap();
    let mut second = session(None);
    second.resume(checkpoint).expect("the tiling is not part of the render's identity");
    assert!(matches!(second.run(&mut StopAfter(usize::MAX, 0), Cadence::default(), resample).unwrap(), Outcome::Finished(_)));
    // The two f32 evaluations round differently (see above) and L-BFGS
    // carries that on: the same picture, to within one 8-bit level, and
    // the same final loss to 1e-3.
    let diff = (whole.image().unwrap() - second.image().unwrap()).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(diff <= 1.0, "largest per-pixel difference: {diff}");
    let (a, b) = (whole.history().last().unwrap().losses.total, second.history().last().unwrap().losses.total);
    assert!(rel(a, b) <= 1e-3, "final losses {a} and {b}");
}

/// A loss term the engine does not have — each channel's mean activation
/// at a layer matched to the style's (a first-moment cousin of the Gram
/// matrix) — written only against `loss::Term`: pushed onto a tiled
/// renderer it gives the untiled losses and gradient, in f64 to 1e-12,
/// without a line of `tiled.rs` knowing it.
#[test]
fn a_new_loss_term_works_tiled_without_touching_the_tiled_path() {
    use stylefarm_engine::loss::{Part, Reads, Term, Weighted, Window};
    use stylefarm_engine::Result;

    /// `Σ_c (mean_c(F) − t_c)²`; statistic `Σ_positions F` (`[C]`).
    struct MeanActivation {
        target: Tensor,
    }
    impl Term for MeanActivation {
        fn statistic(&self, block: &Tensor, _at: Window) -> Result<Tensor> {
            let (_, h, w, c) = block.dims4()?;
            Ok(block.reshape((h * w, c))?.sum(0)?.to_dtype(DType::F64)?)
        }
        fn value(&self, statistic: &Tensor, (h, w): (usize, usize), k: f64) -> Result<(f64, Tensor)> {
            let m = (h * w) as f64;
            let diff = (statistic.affine(1.0 / m, 0.0)? - &self.target)?;
            let value = diff.sqr()?.sum_all()?.to_scalar::<f64>()?;
            Ok((value, diff.affine(2.0 * k / m, 0.0)?))
        }
        fn grad(&self, block: &Tensor, _at: Window, adjoint: &Tensor) -> Result<Tensor> {
            let c = adjoint.dim(0)?;
            Ok(adjoint.to_dtype(block.dtype())?.reshape((1, 1, 1, c))?.broadcast_as(block.shape())?.contiguous()?)
        }
    }

    let net = vgg(DType::F64);
    let c = case(57, 83, DType::F64);
    let conv = stylefarm_engine::arch::conv_index("conv3_1").unwrap();
    let style_features = net.forward(&c.style, conv + 1).unwrap().features[conv].clone();
    let (_, h, w, ch) = style_features.dims4().unwrap();
    let target = style_features.reshape((h * w, ch)).unwrap().mean(0).unwrap();
    let term = || Weighted { part: Part::Style, reads: Reads::Layer(conv), weight: 2.0, term: Box::new(MeanActivation { target: target.clone() }) };

    let plain = Renderer::new(net.clone(), params(), &c.content, &[c.style.clone()]).unwrap();
    let (without, _) = plain.loss_and_grad(&c.image).unwrap();
    let mut whole = Renderer::new(net.clone(), params(), &c.content, &[c.style.clone()]).unwrap();
    whole.push_term(term()).unwrap();
    let (want, want_grad) = whole.loss_and_grad(&c.image).unwrap();
    assert!(rel(want.style, without.style) > 1e-6, "the term adds to the style column: {} against {}", want.style, without.style);
    for (tile, keep) in [(16, 0), (32, 3), (48, 0)] {
        let mut tiled = Renderer::with_execution(net.clone(), params(), &tiles(tile, keep), &c.content, &[c.style.clone()]).unwrap();
        tiled.push_term(term()).unwrap();
        let (got, grad) = tiled.loss_and_grad(&c.image).unwrap();
        for (name, t, u) in [("style", got.style, want.style), ("total", got.total, want.total)] {
            assert!(rel(t, u) <= 1e-12, "tile {tile}: {name} tiled {t}, untiled {u}");
        }
        let e = rel_norm(&grad, &want_grad);
        assert!(e <= 1e-12, "tile {tile}: gradient relative error {e}");
    }
    // A term deeper than the render runs is refused by name.
    let mut shallow = Renderer::new(net.clone(), RenderParams { style_layers: vec![stylefarm_engine::LayerWeight::new("conv1_1", 1.0)], content_layers: vec![stylefarm_engine::LayerWeight::new("conv1_2", 1.0)], ..params() }, &c.content, &[c.style.clone()]).unwrap();
    let err = shallow.push_term(term()).unwrap_err().to_string();
    assert!(err.contains("conv3_1"), "{err}");
}
