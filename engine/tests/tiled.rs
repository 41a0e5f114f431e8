//! Tiled evaluation is exact: against the untiled losses and gradient at
//! sizes where both fit, with several tile sizes and odd image sizes; a
//! 10-iteration render tiled equals the untiled one; and the halo is the
//! smallest that stays exact — one pixel less breaks it.

mod common;

use std::sync::Arc;

use common::Seeded;
use stylefarm_engine::tiled::{Reach, Tiled};
use stylefarm_engine::{DType, InputConvention, Optimizer, RenderParams, Renderer, Tensor, Vgg19};

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
            let tiled = Tiled::new(net.clone(), &p, &c.content, &[c.style.clone()], tile).unwrap();
            let (got, got_grad) = tiled.losses(&c.image, true).unwrap();
            for (name, t, u) in [("content", got.content, untiled.content), ("style", got.style, untiled.style), ("tv", got.tv, untiled.tv), ("total", got.total, untiled.total)] {
                assert!(rel(t, u) <= 1e-5, "{h}x{w}, tile {tile}: {name} tiled {t}, untiled {u}");
            }
            let e = rel_norm(&got_grad.unwrap(), &untiled_grad);
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
        let p = RenderParams { keep_tiles, ..params() };
        let tiled = Tiled::new(net.clone(), &p, &c.content, &[c.style.clone()], 32).unwrap();
        let (losses, grad) = tiled.losses(&c.image, true).unwrap();
        (losses.total, grad.unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())
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
            let p = RenderParams { iterations: 10, optimizer: Optimizer::Lbfgs, tile, keep_tiles: 2, ..params() };
            let r = Renderer::new(net.clone(), p, &c.content, &[c.style.clone()]).unwrap();
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
    let error = |reach: Reach| {
        let tiled = Tiled::with_reach(net.clone(), &p, &c.content, &[c.style.clone()], 32, Some(reach)).unwrap();
        let (got, grad) = tiled.losses(&c.image, true).unwrap();
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
        let tiled = Tiled::new(net.clone(), &p, &c.content, &[c.style.clone()], tile).unwrap();
        let (got, grad) = tiled.losses(&c.image, true).unwrap();
        let e = rel(got.total, want.total).max(rel_norm(&grad.unwrap(), &want_grad));
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
    let p = |tile| RenderParams { iterations: 8, optimizer: Optimizer::Lbfgs, scales: vec![0.5], coarse_iters: Some(4), tile, ..params() };
    let session = |tile| Session::new(net.clone(), p(tile), pictures(76, 60).unwrap(), None).unwrap();

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
