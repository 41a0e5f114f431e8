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

/// The same network in f32 and in f64.
fn vgg_pair() -> (Arc<Vgg19>, Arc<Vgg19>) {
    (vgg(DType::F32), vgg(DType::F64))
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

/// In f32, against the same evaluation in f64: tiling adds at most 2e-5
/// to the losses' relative error and 1e-4 to the gradient's. (The untiled
/// f32 evaluation is itself up to ~2e-5 off the f64 one on these random
/// inputs, and the crops' f32 convolutions round a little differently
/// from the whole image's, so f32 cannot be held to 1e-5; in f64 tiled
/// and untiled agree to 1e-12, below.)
#[test]
fn tiled_losses_and_gradients_equal_the_untiled_ones() {
    let (net, net64) = vgg_pair();
    let p = params();
    for (h, w) in [(101, 131), (97, 83)] {
        let c = case(h, w, DType::F64);
        let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let truth = Renderer::new(net64.clone(), p.clone(), &c.content, &[c.style.clone()]).unwrap();
        let (exact, exact_grad) = truth.loss_and_grad(&c.image).unwrap();
        let exact_grad = f32(&exact_grad);
        let whole = Renderer::new(net.clone(), p.clone(), &f32(&c.content), &[f32(&c.style)]).unwrap();
        let (untiled, untiled_grad) = whole.loss_and_grad(&f32(&c.image)).unwrap();
        for tile in [16, 32, 48, 200] {
            let tiled = Tiled::new(net.clone(), &p, &f32(&c.content), &[f32(&c.style)], tile).unwrap();
            let (got, got_grad) = tiled.losses(&f32(&c.image), true).unwrap();
            for (name, t, u, e) in [
                ("content", got.content, untiled.content, exact.content),
                ("style", got.style, untiled.style, exact.style),
                ("tv", got.tv, untiled.tv, exact.tv),
                ("total", got.total, untiled.total, exact.total),
            ] {
                assert!(rel(t, e) <= 2e-5 + rel(u, e), "{h}x{w}, tile {tile}: {name} tiled {t}, untiled {u}, f64 {e}");
            }
            let (t, u) = (rel_norm(&got_grad.unwrap(), &exact_grad), rel_norm(&untiled_grad, &exact_grad));
            assert!(t <= 1e-4 + u, "{h}x{w}, tile {tile}: gradient relative error {t} (untiled {u})");
        }
    }
}

/// In f64: in f32 the two evaluations round differently (the tiled one
/// sums its Gram matrices in f64, the untiled one in f32), and ten L-BFGS
/// iterations carry that to ~1e-4 of a pixel value.
#[test]
fn a_tiled_render_equals_the_untiled_one() {
    let net = vgg(DType::F64);
    let c = case(70, 90, DType::F64);
    let run = |tile: Option<usize>| {
        let p = RenderParams { iterations: 10, optimizer: Optimizer::Lbfgs, tile, ..params() };
        let r = Renderer::new(net.clone(), p, &c.content, &[c.style.clone()]).unwrap();
        let mut state = r.initial_state(&c.content, None).unwrap();
        while state.iteration < 10 {
            r.step(&mut state).unwrap();
        }
        state.image
    };
    let (whole, tiled) = (run(None), run(Some(32)));
    let diff = (&whole - &tiled).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    assert!(diff <= 1e-4, "largest per-pixel difference after 10 iterations: {diff}");
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
